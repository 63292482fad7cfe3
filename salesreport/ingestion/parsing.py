"""From a POST body to sales: decoding, and the rules a request must keep on its own."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import datetime, timedelta
from itertools import islice
from typing import Any

import msgspec

from ..schemas import CONTROL_CHARACTERS, EARLIEST_SALE, MAX_BATCH, MAX_ERRORS, FieldError, SaleIn, SalesIn
from .errors import Malformed, Rejected

FUTURE_TOLERANCE = timedelta(minutes=5)
_sale_fields = msgspec.structs.fields(SaleIn)
_known_fields = frozenset(f.encode_name for f in _sale_fields)
_decoder = msgspec.json.Decoder(SalesIn)


def parse_sales(body: bytes) -> tuple[list[SaleIn], bool]:
    """Decode a POST body into sales, and whether it was an array.

    The typed decoder is the fast path. When it refuses, the body is decoded
    again untyped to tell malformed JSON (400) from a wrong shape (422) and to
    name the offending fields, which msgspec alone stops at the first of.
    """
    try:
        decoded = _decoder.decode(body)
    except msgspec.ValidationError:
        pass
    except (msgspec.DecodeError, RecursionError, UnicodeDecodeError) as exc:
        raise Malformed(str(exc)) from None
    else:
        return (decoded, True) if isinstance(decoded, list) else ([decoded], False)
    try:
        generic = msgspec.json.decode(body)
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError, UnicodeDecodeError) as exc:
        raise Malformed(str(exc)) from None
    errors, total = shape_errors(generic)
    raise Rejected(errors, total)


def shape_errors(value: Any) -> tuple[list[FieldError], int]:
    """The first ``MAX_ERRORS`` errors of a body of the wrong shape, and how many there are.

    Counting is cheap (set arithmetic); only the errors listed are built, so a
    body of a hundred thousand bad fields costs no more than one of a hundred.
    """
    if isinstance(value, dict):
        items: list[tuple[Any, int | None]] = [(value, None)]
    elif isinstance(value, list):
        if not 1 <= len(value) <= MAX_BATCH:
            return [FieldError(field="body", message=f"an array must hold 1 to {MAX_BATCH} sales, got {len(value)}")], 1
        items = [(item, index) for index, item in enumerate(value)]
    else:
        return [FieldError(field="body", message="expected a sale object or an array of sale objects")], 1
    errors: list[FieldError] = []
    total = 0
    for item, index in items:
        count, listed = _item_errors(item, index)
        total += count
        errors.extend(islice(listed, MAX_ERRORS - len(errors)))
    return errors, total


def _item_errors(item: Any, index: int | None) -> tuple[int, Iterator[FieldError]]:
    """How many errors ``item`` has, and a lazy list of them."""
    if not isinstance(item, dict):
        return 1, iter([FieldError(field="body", index=index, message="expected a sale object")])
    unknown = len(item.keys() - _known_fields)
    field_errors = list(_field_errors(item, index))
    return unknown + len(field_errors), _chain_unknown(item, index, field_errors)


def _chain_unknown(item: dict[Any, Any], index: int | None, then: list[FieldError]) -> Iterator[FieldError]:
    for name in item:
        if name not in _known_fields:
            yield FieldError(field=str(name)[:64], index=index, message="unknown field")
    yield from then


def _field_errors(item: dict[Any, Any], index: int | None) -> Iterator[FieldError]:
    for f in _sale_fields:
        if f.encode_name not in item:
            if f.required:
                yield FieldError(field=f.encode_name, index=index, message="required")
            continue
        try:
            msgspec.convert(item[f.encode_name], f.type, strict=True)
        except msgspec.ValidationError as exc:
            yield FieldError(field=f.encode_name, index=index, message=str(exc).split(" - at ")[0][:200])


def check_sales(sales: Sequence[SaleIn], now: datetime, is_array: bool) -> list[FieldError]:
    """Rules beyond types that need nothing but the request: time bounds and clean keys.

    Whether two items of an array with one key are the same sale is decided
    with every other replay, by ``replay.is_replay``.
    """
    errors: list[FieldError] = []
    for i, sale in enumerate(sales):
        index = i if is_array else None
        if sale.sold_at is not None:
            if sale.sold_at > now + FUTURE_TOLERANCE:
                errors.append(FieldError(field="sold_at", index=index, message="more than 5 minutes in the future"))
            elif sale.sold_at < EARLIEST_SALE:
                errors.append(FieldError(field="sold_at", index=index, message="before 2000-01-01"))
        if sale.idempotency_key is not None and CONTROL_CHARACTERS.search(sale.idempotency_key):
            # The pattern's $ lets a final newline through.
            errors.append(FieldError(field="idempotency_key", index=index, message="control characters"))
    return errors
