"""From a POST body to sales: decoding, and the rules a request must keep on its own."""

from __future__ import annotations

import asyncio
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


async def parse_sales(body: bytes) -> tuple[list[SaleIn], bool]:
    """Decode a POST body into sales, and whether it was an array.

    The typed decoder is the fast path, and the only one for a valid body.
    When it refuses, ``explain`` tells malformed JSON (400) from a wrong shape
    (422) and names the offending fields, which msgspec alone stops at the
    first of.
    """
    try:
        decoded = _decoder.decode(body)
    except msgspec.ValidationError:
        pass
    except _MALFORMED as exc:
        raise Malformed(str(exc)) from None
    else:
        return (decoded, True) if isinstance(decoded, list) else ([decoded], False)
    errors, total = await explain(body)
    raise Rejected(errors, total)


_MALFORMED = (msgspec.DecodeError, RecursionError, UnicodeDecodeError)
# A sale object is a few hundred bytes: one this large is refused whole,
# unread, so that no single object costs more than a moment to explain.
MAX_ITEM_BYTES = 16 * 1024
# Explaining yields to the event loop after this many bytes, so that a large
# bad body never holds other requests up for more than a millisecond or two.
_SLICE_BYTES = 16 * 1024


async def explain(body: bytes) -> tuple[list[FieldError], int]:
    """Why a body that is JSON is not sales: the first ``MAX_ERRORS`` errors and
    how many there are. Raises ``Malformed`` if it is not JSON after all.

    Items are decoded one at a time (the array is first split without being
    built), and only the errors listed are built, so a body of a hundred
    thousand bad fields costs no more time than its size, and its answer no
    more than a hundred errors.
    """
    head = body.lstrip()[:1]
    try:
        if head == b"[":
            raws = msgspec.json.decode(body, type=list[msgspec.Raw])
            if not 1 <= len(raws) <= MAX_BATCH:
                return [
                    FieldError(field="body", message=f"an array must hold 1 to {MAX_BATCH} sales, got {len(raws)}")
                ], 1
            items: list[tuple[int | None, bytes | msgspec.Raw]] = list(enumerate(raws))
        elif head == b"{":
            items = [(None, msgspec.json.decode(body, type=msgspec.Raw))]  # checks the syntax, builds nothing
        else:
            msgspec.json.decode(body)  # valid JSON, of the wrong kind?
            return [FieldError(field="body", message="expected a sale object or an array of sale objects")], 1
    except _MALFORMED as exc:
        raise Malformed(str(exc)) from None
    errors: list[FieldError] = []
    total = 0
    decoded_bytes = 0
    for index, raw in items:
        size = len(raw)
        if size > MAX_ITEM_BYTES:
            total += 1
            if len(errors) < MAX_ERRORS:
                message = f"{size} bytes: a sale object is at most {MAX_ITEM_BYTES} bytes"
                errors.append(FieldError(field="body", index=index, message=message))
            continue
        try:
            item = msgspec.json.decode(raw)
        except _MALFORMED as exc:
            raise Malformed(str(exc)) from None
        count, listed = _item_errors(item, index)
        total += count
        errors.extend(islice(listed, MAX_ERRORS - len(errors)))
        decoded_bytes += size
        if decoded_bytes >= _SLICE_BYTES:
            decoded_bytes = 0
            await asyncio.sleep(0)
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
