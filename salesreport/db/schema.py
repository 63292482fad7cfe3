"""The schema both databases share.

Money is integer minor units (``BIGINT``); instants are UTC; ``month`` is a
sale's month in its store's local calendar as an integer ``YYYYMM``, computed
once when the sale is stored.

The rollup tables hold one row per key and *slot*: each writer process adds
into its own slot so that concurrent writers seldom queue on one hot row, and
readers sum the slots.
"""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa
from sqlalchemy.engine import Dialect

SLOTS = 8
# The bound of every rollup value. A slot's row is refused past it (the
# request that would cross it fails alone), so that the sum of all slots
# always fits a BIGINT: on SQLite an integer overflow silently becomes a float.
ROLLUP_LIMIT = 2**59


class UTCDateTime(sa.TypeDecorator[datetime]):
    """A timezone-aware instant, stored in UTC (SQLite keeps it as naive text)."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def within_limit(table: str, *columns: str) -> sa.CheckConstraint:
    bound = " AND ".join(f"{c} BETWEEN -{ROLLUP_LIMIT} AND {ROLLUP_LIMIT}" for c in columns)
    return sa.CheckConstraint(bound, name=f"{table}_within_limit")


metadata = sa.MetaData()

products = sa.Table(
    "products",
    metadata,
    sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("price", sa.BigInteger, nullable=False),
    sa.CheckConstraint("price > 0", name="products_price_positive"),
)

stores = sa.Table(
    "stores",
    metadata,
    sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("address", sa.String(500), nullable=False),
    sa.Column("timezone", sa.String(64), nullable=False),
)

# No foreign keys: they halve the batched insert rate (see BENCHMARKS.md);
# the writer checks ids against its copy of the catalog, and catalog rows are
# never deleted. An idempotency key is unique per store while it lives (see
# ``ingestion.replay``); an expired key is cleared from its sale when reused.
sales = sa.Table(
    "sales",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True),
    sa.Column("store_id", sa.BigInteger, nullable=False),
    sa.Column("product_id", sa.BigInteger, nullable=False),
    sa.Column("quantity", sa.Integer, nullable=False),
    sa.Column("unit_price", sa.BigInteger, nullable=False),
    sa.Column("amount", sa.BigInteger, nullable=False),
    sa.Column("sold_at", UTCDateTime, nullable=False),
    sa.Column("received_at", UTCDateTime, nullable=False),
    sa.Column("month", sa.Integer, nullable=False),
    sa.Column("idempotency_key", sa.String(128), nullable=True),
    sa.UniqueConstraint("store_id", "idempotency_key", name="sales_store_id_idempotency_key_key"),
)

store_month = sa.Table(
    "store_month",
    metadata,
    sa.Column("store_id", sa.BigInteger, primary_key=True),
    sa.Column("month", sa.Integer, primary_key=True),
    sa.Column("slot", sa.SmallInteger, primary_key=True),
    sa.Column("revenue", sa.BigInteger, nullable=False),
    sa.Column("sales", sa.BigInteger, nullable=False),
    sa.Index("store_month_month_idx", "month"),
    within_limit("store_month", "revenue", "sales"),
)

product_month = sa.Table(
    "product_month",
    metadata,
    sa.Column("product_id", sa.BigInteger, primary_key=True),
    sa.Column("month", sa.Integer, primary_key=True),
    sa.Column("slot", sa.SmallInteger, primary_key=True),
    sa.Column("quantity", sa.BigInteger, nullable=False),
    sa.Index("product_month_month_idx", "month"),
    within_limit("product_month", "quantity"),
)

product_total = sa.Table(
    "product_total",
    metadata,
    sa.Column("product_id", sa.BigInteger, primary_key=True),
    sa.Column("slot", sa.SmallInteger, primary_key=True),
    sa.Column("quantity", sa.BigInteger, nullable=False),
    within_limit("product_total", "quantity"),
)

# Change counters, one row per name ("catalog", "keys"): every process holds
# a copy of the catalog and of the API keys, and reloads when a counter moves.
versions = sa.Table(
    "versions",
    metadata,
    sa.Column("name", sa.String(32), primary_key=True),
    sa.Column("version", sa.BigInteger, nullable=False),
)

api_keys = sa.Table(
    "api_keys",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("hash", sa.String(64), nullable=False, unique=True),
    sa.Column("role", sa.String(16), nullable=False),
    sa.Column("store_id", sa.BigInteger, nullable=True),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("last_used_at", UTCDateTime, nullable=True),
    sa.Column("revoked_at", UTCDateTime, nullable=True),
    sa.CheckConstraint("role IN ('owner', 'pos')", name="api_keys_role"),
    sa.CheckConstraint("(role = 'pos') = (store_id IS NOT NULL)", name="api_keys_pos_has_store"),
)
