"""What goes over the wire: request and response shapes, money and months.

The OpenAPI document is generated from these structs (see ``openapi.py``).
"""

from __future__ import annotations

import functools
import re
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Annotated, Any

import msgspec

MAX_ID = 2**63 - 1
MAX_BATCH = 1000
# A 422 lists at most this many field errors, and counts them all (``error_count``).
MAX_ERRORS = 100
# Sales dated before this are refused: no POS sells in the past century, and
# the bound keeps every local-calendar conversion far from datetime's limits.
EARLIEST_SALE = datetime(2000, 1, 1, tzinfo=UTC)

Id = Annotated[int, msgspec.Meta(ge=1, le=MAX_ID, description="Identifier given by the chain.")]
Quantity = Annotated[int, msgspec.Meta(ge=1, le=10_000)]
# Text without control characters (PostgreSQL refuses NUL outright).
CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f-\x9f]")
IdempotencyKey = Annotated[
    str,
    msgspec.Meta(min_length=1, max_length=128, pattern=r"^[^\x00-\x1f\x7f-\x9f]+$", examples=["till-4-000123"]),
]
Money = Annotated[
    str,
    msgspec.Meta(
        pattern=r"^-?[0-9]+\.[0-9]{2}$", description="Exact amount, two fraction digits.", examples=["1234.50"]
    ),
]
Instant = Annotated[datetime, msgspec.Meta(tz=True, description="RFC 3339 date-time with an offset.")]
# Prices: at most 99,999,999.99, so that quantity × price stays far inside BIGINT.
MAX_PRICE = 99_999_999_99
PriceIn = Annotated[
    str,
    msgspec.Meta(
        pattern=r"^[0-9]{1,8}(\.[0-9]{1,2})?$",
        description="The price actually charged per unit: a decimal string, 0.00 to 99999999.99.",
        examples=["2.49"],
    ),
]


class SaleIn(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    product_id: Id
    store_id: Id
    quantity: Quantity = 1
    sold_at: Instant | None = None
    idempotency_key: IdempotencyKey | None = None
    # Without it, the sale is charged the catalog price in force at ``sold_at``.
    unit_price: PriceIn | None = None


SalesIn = SaleIn | Annotated[list[SaleIn], msgspec.Meta(min_length=1, max_length=MAX_BATCH)]


class SaleOut(msgspec.Struct, kw_only=True):
    id: int
    product_id: int
    store_id: int
    quantity: int
    unit_price: Money  # the price charged
    amount: Money  # quantity × unit_price
    sold_at: datetime
    idempotency_key: str | None
    catalog_price: Money  # the catalog's price in force at sold_at


class ReturnIn(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    sale_id: Id
    quantity: Quantity = 1
    # The store taking the goods back; default: the sale's store.
    store_id: Id | None = None
    returned_at: Instant | None = None
    idempotency_key: IdempotencyKey | None = None


ReturnsIn = ReturnIn | Annotated[list[ReturnIn], msgspec.Meta(min_length=1, max_length=MAX_BATCH)]


class ReturnOut(msgspec.Struct, kw_only=True):
    id: int
    sale_id: int
    store_id: int
    product_id: int
    quantity: int
    unit_price: Money  # the sale's price charged
    amount: Money  # the refund: quantity × unit_price
    returned_at: datetime
    idempotency_key: str | None


class SaleDetail(SaleOut, kw_only=True):
    returns: list[ReturnOut]


class Product(msgspec.Struct, kw_only=True, omit_defaults=True):
    id: int
    name: str
    price: Money  # in force now
    retired: bool = False


class PriceOut(msgspec.Struct, kw_only=True):
    effective_from: datetime | None  # None: the first price, in force from the beginning
    price: Money


class ProductDetail(Product, kw_only=True, omit_defaults=True):
    prices: list[PriceOut] = []


class Store(msgspec.Struct, kw_only=True, omit_defaults=True):
    id: int
    address: str
    timezone: str
    retired: bool = False


class TopStore(msgspec.Struct, kw_only=True):
    id: int
    address: str
    revenue: Money  # net: gross - refunds
    gross: Money
    refunds: Money
    discounts: Money


class TopProduct(msgspec.Struct, kw_only=True):
    id: int
    name: str
    quantity: int  # net: sold - returned
    sold: int
    returned: int
    revenue: Money  # net


class MonthRevenue(msgspec.Struct, kw_only=True):
    month: str  # YYYY-MM
    revenue: Money  # net: gross - refunds
    gross: Money
    refunds: Money
    discounts: Money
    sales: int  # how many sales


class FieldError(msgspec.Struct, kw_only=True, omit_defaults=True):
    field: str
    message: str
    index: int | None = None


class Problem(msgspec.Struct, kw_only=True, omit_defaults=True):
    """An RFC 9457 problem document."""

    status: int
    title: str
    detail: str
    type: str = "about:blank"
    errors: list[FieldError] | None = None
    # How many field errors there are; ``errors`` lists the first MAX_ERRORS.
    error_count: int | None = None


# --- money ---------------------------------------------------------------------

_MONEY_IN = re.compile(r"^[0-9]{1,15}(\.[0-9]{1,2})?$")


# Remembered: a batch formats the same few prices over and over (three figures per sale it answers).
@functools.lru_cache(maxsize=4096)
def format_money(cents: int) -> str:
    sign = "-" if cents < 0 else ""
    whole, frac = divmod(abs(cents), 100)
    return f"{sign}{whole}.{frac:02d}"


def parse_money(text: str) -> int:
    """Parse a non-negative decimal with at most two fraction digits into cents."""
    text = text.strip()
    if not _MONEY_IN.fullmatch(text):
        raise ValueError(f"not an amount with at most two decimals: {text!r}")
    try:
        return int(Decimal(text) * 100)
    except InvalidOperation:  # pragma: no cover - the pattern already excludes it
        raise ValueError(f"not an amount: {text!r}") from None


# --- ids ---------------------------------------------------------------------------


def parse_count(text: str, high: int) -> int | None:
    """A whole number as a path or query gives it (ASCII digits, 1..``high``), or None. Its digits are
    counted before ``int()`` reads them: ``int()`` refuses a string of more than 4300 digits (a
    ValueError, which would be a 500), and a longer one costs time for nothing."""
    digits = text.lstrip("0")
    if not text.isascii() or not text.isdigit() or len(digits) > len(str(high)):
        return None
    value = int(digits or "0")
    return value if 1 <= value <= high else None


def parse_id(text: str) -> int | None:
    """An id as a path or query gives it (ASCII digits, 1..MAX_ID), or None."""
    return parse_count(text, MAX_ID)


# --- months --------------------------------------------------------------------

# A year 0001..9999 (the calendar has no year 0) and a month 01..12; the API's document gives the same.
MONTH_PATTERN = r"^([1-9][0-9]{3}|0[1-9][0-9]{2}|00[1-9][0-9]|000[1-9])-(0[1-9]|1[0-2])$"
_MONTH = re.compile(MONTH_PATTERN)


def parse_month(text: str) -> int:
    """``"2026-11"`` → ``202611``; anything else raises ValueError."""
    match = _MONTH.fullmatch(text)
    if not match:
        raise ValueError("month must be YYYY-MM with a year 0001..9999 and a month 01..12")
    return int(match.group(1)) * 100 + int(match.group(2))


def format_month(month: int) -> str:
    """``202611`` → ``"2026-11"``."""
    return f"{month // 100:04d}-{month % 100:02d}"


# Remembered: the sales of one request without ``sold_at`` share one instant, and a zone's conversion is
# the costly part.
@functools.lru_cache(maxsize=1024)
def month_of(instant: datetime, zone: Any) -> int:
    local = instant.astimezone(zone)
    return local.year * 100 + local.month


encoder = msgspec.json.Encoder()
