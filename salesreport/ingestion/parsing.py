"""From a POST body to sales (or returns): decoding, and the rules a request must keep on its own."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator, Sequence
from datetime import datetime, timedelta
from itertools import islice
from typing import Any

import msgspec

from ..schemas import (
    CONTROL_CHARACTERS,
    EARLIEST_SALE,
    MAX_BATCH,
    MAX_ERRORS,
    FieldError,
    ReturnIn,
    ReturnsIn,
    SaleIn,
    SalesIn,
)
from .errors import Malformed, Rejected

FUTURE_TOLERANCE = timedelta(minutes=5)


class Parser:
    """Decodes one kind of POST body: an object, or an array of 1..MAX_BATCH of them."""

    def __init__(self, item: type[msgspec.Struct], body: Any, noun: str) -> None:
        self.fields = msgspec.structs.fields(item)
        self.known = frozenset(f.encode_name for f in self.fields)
        self.decoder = msgspec.json.Decoder(body)
        self.item_decoder = msgspec.json.Decoder(item)
        self.noun = noun

    async def parse(self, body: bytes) -> tuple[list[Any], bool]:
        """Decode a POST body into items, and whether it was an array.

        The typed decoder is the fast path, and the only one for a valid body.
        When it refuses, ``explain`` tells malformed JSON (400) from a wrong shape
        (422) and names the offending fields, which msgspec alone stops at the
        first of.
        """
        try:
            decoded = self.decoder.decode(body)
        except msgspec.ValidationError:
            pass
        except _MALFORMED as exc:
            raise Malformed(str(exc)) from None
        else:
            return (decoded, True) if isinstance(decoded, list) else ([decoded], False)
        errors, total = await explain(body, self)
        raise Rejected(errors, total)


SALES = Parser(SaleIn, SalesIn, "sale")
RETURNS = Parser(ReturnIn, ReturnsIn, "return")


async def parse_sales(body: bytes) -> tuple[list[SaleIn], bool]:
    return await SALES.parse(body)


async def parse_returns(body: bytes) -> tuple[list[ReturnIn], bool]:
    return await RETURNS.parse(body)


_MALFORMED = (msgspec.DecodeError, RecursionError, UnicodeDecodeError)
# A sale object is a few hundred bytes: one this large is refused whole,
# unread, so that no single object costs more than a moment to explain.
MAX_ITEM_BYTES = 16 * 1024
# Explaining yields to the event loop after this many bytes, so that a large
# bad body never holds other requests up for more than a millisecond or two.
_SLICE_BYTES = 16 * 1024


async def explain(body: bytes, parser: Parser = SALES) -> tuple[list[FieldError], int]:
    """Why a body that is JSON is not sales (or returns): the first ``MAX_ERRORS`` errors and
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
                    FieldError(
                        field="body", message=f"an array must hold 1 to {MAX_BATCH} {parser.noun}s, got {len(raws)}"
                    )
                ], 1
            items: list[tuple[int | None, bytes | msgspec.Raw]] = list(enumerate(raws))
        elif head == b"{":
            items = [(None, msgspec.json.decode(body, type=msgspec.Raw))]  # checks the syntax, builds nothing
        else:
            msgspec.json.decode(body)  # valid JSON, of the wrong kind?
            noun = parser.noun
            return [FieldError(field="body", message=f"expected a {noun} object or an array of {noun} objects")], 1
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
                message = f"{size} bytes: a {parser.noun} object is at most {MAX_ITEM_BYTES} bytes"
                errors.append(FieldError(field="body", index=index, message=message))
            continue
        try:
            item = msgspec.json.decode(raw)
        except _MALFORMED as exc:
            raise Malformed(str(exc)) from None
        count, listed = _item_errors(item, index, parser)
        if count == 0:
            refused = _refused_value(raw, index, parser)
            if refused is not None:
                count, listed = 1, iter([refused])
        total += count
        errors.extend(islice(listed, MAX_ERRORS - len(errors)))
        decoded_bytes += size
        if decoded_bytes >= _SLICE_BYTES:
            decoded_bytes = 0
            await asyncio.sleep(0)
    return errors, total


def _item_errors(item: Any, index: int | None, parser: Parser) -> tuple[int, Iterator[FieldError]]:
    """How many errors ``item`` has, and a lazy list of them."""
    if not isinstance(item, dict):
        return 1, iter([FieldError(field="body", index=index, message=f"expected a {parser.noun} object")])
    unknown = len(item.keys() - parser.known)
    field_errors = list(_field_errors(item, index, parser))
    return unknown + len(field_errors), _chain_unknown(item, index, field_errors, parser)


def _refused_value(raw: bytes | msgspec.Raw, index: int | None, parser: Parser) -> FieldError | None:
    """Why the typed decoder refuses an item whose fields, as decoded, are each valid: a member given
    more than once, a value before its last one invalid (the decoder checks every value it is given,
    though only the last counts; a decoded object keeps the last alone)."""
    try:
        parser.item_decoder.decode(raw)
    except msgspec.ValidationError as exc:
        message, _, path = str(exc).partition(" - at `$.")
        field = re.split(r"[.\[`]", path, maxsplit=1)[0] or "body"
        suffix = "; every value of a member given more than once must be valid"
        return FieldError(field=field[:64], index=index, message=message[:200] + suffix)
    return None


def _chain_unknown(
    item: dict[Any, Any], index: int | None, then: list[FieldError], parser: Parser
) -> Iterator[FieldError]:
    for name in item:
        if name not in parser.known:
            yield FieldError(field=str(name)[:64], index=index, message="unknown field")
    yield from then


def _field_errors(item: dict[Any, Any], index: int | None, parser: Parser) -> Iterator[FieldError]:
    for f in parser.fields:
        if f.encode_name not in item:
            if f.required:
                yield FieldError(field=f.encode_name, index=index, message="required")
            continue
        try:
            msgspec.convert(item[f.encode_name], f.type, strict=True)
        except msgspec.ValidationError as exc:
            yield FieldError(field=f.encode_name, index=index, message=str(exc).split(" - at ")[0][:200])


def check_sales(sales: Sequence[SaleIn], now: datetime, is_array: bool) -> list[FieldError]:
    """Rules beyond types that need nothing but the request: time bounds, clean keys and prices.

    Whether two items of an array with one key are the same sale is decided
    with every other replay, by ``replay.is_replay``.
    """
    errors: list[FieldError] = []
    for i, sale in enumerate(sales):
        index = i if is_array else None
        errors += _check_instant("sold_at", sale.sold_at, now, index)
        errors += _check_key(sale.idempotency_key, index)
        if sale.unit_price is not None and not _PRICE.fullmatch(sale.unit_price):
            # The pattern's $ lets a final newline through.
            errors.append(FieldError(field="unit_price", index=index, message="not a price such as 2.49"))
    return errors


def check_returns(items: Sequence[ReturnIn], now: datetime, is_array: bool) -> list[FieldError]:
    """The same rules for returns (that a return follows its sale needs the sale: ``returns.ReturnPlan``)."""
    errors: list[FieldError] = []
    for i, item in enumerate(items):
        index = i if is_array else None
        errors += _check_instant("returned_at", item.returned_at, now, index)
        errors += _check_key(item.idempotency_key, index)
    return errors


_PRICE = re.compile(r"[0-9]{1,8}(\.[0-9]{1,2})?")


def _check_instant(name: str, instant: datetime | None, now: datetime, index: int | None) -> list[FieldError]:
    if instant is None:
        return []
    if instant > now + FUTURE_TOLERANCE:
        return [FieldError(field=name, index=index, message="more than 5 minutes in the future")]
    if instant < EARLIEST_SALE:
        return [FieldError(field=name, index=index, message="before 2000-01-01")]
    return []


def _check_key(key: str | None, index: int | None) -> list[FieldError]:
    if key is not None and CONTROL_CHARACTERS.search(key):
        # The pattern's $ lets a final newline through.
        return [FieldError(field="idempotency_key", index=index, message="control characters")]
    return []
