"""The schema both databases share.

Money is integer minor units (``BIGINT``); instants are UTC; ``month`` is a
sale's (or a return's) month in its store's local calendar as an integer
``YYYYMM``, computed once when it is stored.

The rollup tables hold one row per key and *slot*: each writer process adds
into its own slot so that concurrent writers seldom queue on one hot row, and
readers sum the slots. Their figures are net: ``revenue`` is what the sales
took in less what returns gave back, ``quantity`` is units sold less units
returned; ``refunds``, ``returned`` and ``discounts`` say how much of that
was given back or given away.
"""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa
from sqlalchemy.engine import Dialect

SLOTS = 8
# A product's first price has no start: it is stored as taking effect at this
# instant, before which no sale can be dated (see ``schemas.EARLIEST_SALE``).
BEGINNING = datetime(2000, 1, 1, tzinfo=UTC)
# The bound of every rollup value. A slot's row is refused past it (the
# request that would cross it fails alone), so that the sum of all slots
# always fits a BIGINT: on SQLite an integer overflow silently becomes a float.
ROLLUP_LIMIT = 2**59
# On PostgreSQL the rollups' value columns are of this domain over bigint, which holds the bound
# (migration 0008: a CHECK per table costs every statement that writes it a parse); on SQLite
# each rollup table has its CHECK (``within_limit``).
ROLLUP_DOMAIN = "rollup_value"
# Each rollup's key columns (besides ``slot``) and value columns.
ROLLUP_KEYS = {
    "store_month": ("store_id", "month"),
    "product_month": ("product_id", "month"),
    "product_total": ("product_id",),
    "store_product_month": ("store_id", "product_id", "month"),
}
ROLLUP_COLUMNS = {
    "store_month": ("revenue", "sales", "refunds", "discounts"),
    "product_month": ("quantity", "returned", "revenue"),
    "product_total": ("quantity", "returned", "revenue"),
    "store_product_month": ("quantity", "returned", "revenue"),
}


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
    """The bound of ``table``'s values on SQLite (PostgreSQL: ``ROLLUP_DOMAIN``)."""
    bound = " AND ".join(f"{c} BETWEEN -{ROLLUP_LIMIT} AND {ROLLUP_LIMIT}" for c in columns)
    return sa.CheckConstraint(bound, name=f"{table}_within_limit").ddl_if(dialect="sqlite")


metadata = sa.MetaData()

products = sa.Table(
    "products",
    metadata,
    sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("retired", sa.Boolean, nullable=False, server_default=sa.false()),
)

# A product's price history: each price is in force from ``effective_from``
# until the next one's. Rows are only ever added: past prices are never rewritten.
prices = sa.Table(
    "prices",
    metadata,
    sa.Column("product_id", sa.BigInteger, primary_key=True),
    sa.Column("effective_from", UTCDateTime, primary_key=True),
    sa.Column("price", sa.BigInteger, nullable=False),
    sa.CheckConstraint("price > 0", name="prices_price_positive"),
)

stores = sa.Table(
    "stores",
    metadata,
    sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("address", sa.String(500), nullable=False),
    sa.Column("timezone", sa.String(64), nullable=False),
    sa.Column("retired", sa.Boolean, nullable=False, server_default=sa.false()),
)

# No foreign keys: they halve the batched insert rate (see BENCHMARKS.md);
# the writer checks ids against its copy of the catalog, and catalog rows are
# never deleted. An idempotency key is unique per store while it lives (see
# ``ingestion.replay``); an expired key is cleared from its sale when reused.
# ``unit_price`` is the price charged, ``catalog_price`` the catalog's price in
# force at ``sold_at``; ``amount`` is quantity × price charged. ``returned``
# counts the units returned so far: a return updates it under the row's lock,
# so that concurrent returns of one sale can never return more than was sold.
# On PostgreSQL the table is partitioned by ``month`` (``db.partitions``): its
# primary key is (id, month), and the unique key is ``sale_keys``'.
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
    sa.Column("catalog_price", sa.BigInteger, nullable=False),
    sa.Column("returned", sa.Integer, nullable=False, server_default=sa.text("0")),
    sa.UniqueConstraint("store_id", "idempotency_key", name="sales_store_id_idempotency_key_key"),
    sa.CheckConstraint("returned BETWEEN 0 AND quantity", name="sales_returned_within_quantity"),
)

# PostgreSQL only: the live idempotency keys of sales. ``sales`` is partitioned by month there, and a
# unique index of a partitioned table must hold the partition key, so (store_id, idempotency_key) is
# unique here instead, one row per keyed sale, naming it (``sale_id`` and ``month`` find its row in its
# partition). The writer inserts here first, in the same statement; keys older than the key lifetime
# are pruned (``db.partitions.prune_keys``). On SQLite ``sales``' own unique constraint does this.
sale_keys = sa.Table(
    "sale_keys",
    metadata,
    sa.Column("store_id", sa.BigInteger, primary_key=True),
    sa.Column("idempotency_key", sa.String(128), primary_key=True),
    sa.Column("sale_id", sa.BigInteger, nullable=False),
    sa.Column("month", sa.Integer, nullable=False),
    sa.Column("received_at", UTCDateTime, nullable=False),
    sa.Index("sale_keys_received_at_idx", "received_at"),
)

# Goods brought back: ``quantity`` units of sale ``sale_id``, refunded at the
# sale's own price charged (``unit_price``; ``amount`` is the refund), counted
# in ``month`` of the store that took them back (``store_id``), when it did.
# Idempotency keys are unique per store taking returns, apart from sales' keys.
returns = sa.Table(
    "returns",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True),
    sa.Column("sale_id", sa.BigInteger, nullable=False),
    sa.Column("store_id", sa.BigInteger, nullable=False),
    sa.Column("product_id", sa.BigInteger, nullable=False),
    sa.Column("quantity", sa.Integer, nullable=False),
    sa.Column("unit_price", sa.BigInteger, nullable=False),
    sa.Column("amount", sa.BigInteger, nullable=False),
    sa.Column("returned_at", UTCDateTime, nullable=False),
    sa.Column("received_at", UTCDateTime, nullable=False),
    sa.Column("month", sa.Integer, nullable=False),
    sa.Column("idempotency_key", sa.String(128), nullable=True),
    sa.UniqueConstraint("store_id", "idempotency_key", name="returns_store_id_idempotency_key_key"),
    sa.Index("returns_sale_id_idx", "sale_id"),
)

store_month = sa.Table(
    "store_month",
    metadata,
    sa.Column("store_id", sa.BigInteger, primary_key=True),
    sa.Column("month", sa.Integer, primary_key=True),
    sa.Column("slot", sa.SmallInteger, primary_key=True),
    sa.Column("revenue", sa.BigInteger, nullable=False),
    sa.Column("sales", sa.BigInteger, nullable=False),
    sa.Column("refunds", sa.BigInteger, nullable=False, server_default=sa.text("0")),
    sa.Column("discounts", sa.BigInteger, nullable=False, server_default=sa.text("0")),
    sa.Index("store_month_month_idx", "month"),
    within_limit("store_month", *ROLLUP_COLUMNS["store_month"]),
)

product_month = sa.Table(
    "product_month",
    metadata,
    sa.Column("product_id", sa.BigInteger, primary_key=True),
    sa.Column("month", sa.Integer, primary_key=True),
    sa.Column("slot", sa.SmallInteger, primary_key=True),
    sa.Column("quantity", sa.BigInteger, nullable=False),
    sa.Column("returned", sa.BigInteger, nullable=False, server_default=sa.text("0")),
    sa.Column("revenue", sa.BigInteger, nullable=False, server_default=sa.text("0")),
    sa.Index("product_month_month_idx", "month"),
    within_limit("product_month", *ROLLUP_COLUMNS["product_month"]),
)

product_total = sa.Table(
    "product_total",
    metadata,
    sa.Column("product_id", sa.BigInteger, primary_key=True),
    sa.Column("slot", sa.SmallInteger, primary_key=True),
    sa.Column("quantity", sa.BigInteger, nullable=False),
    sa.Column("returned", sa.BigInteger, nullable=False, server_default=sa.text("0")),
    sa.Column("revenue", sa.BigInteger, nullable=False, server_default=sa.text("0")),
    within_limit("product_total", *ROLLUP_COLUMNS["product_total"]),
)

# A store's products by month (the store page's top ten): as product_month, per store.
store_product_month = sa.Table(
    "store_product_month",
    metadata,
    sa.Column("store_id", sa.BigInteger, primary_key=True),
    sa.Column("product_id", sa.BigInteger, primary_key=True),
    sa.Column("month", sa.Integer, primary_key=True),
    sa.Column("slot", sa.SmallInteger, primary_key=True),
    sa.Column("quantity", sa.BigInteger, nullable=False),
    sa.Column("returned", sa.BigInteger, nullable=False, server_default=sa.text("0")),
    sa.Column("revenue", sa.BigInteger, nullable=False, server_default=sa.text("0")),
    sa.Index("store_product_month_store_month_idx", "store_id", "month"),
    within_limit("store_product_month", *ROLLUP_COLUMNS["store_product_month"]),
)

# Months whose raw sales (and the returns of those sales) were archived to files and removed
# (``archive``); one row per run that archived the month (a late sale of an archived month is
# archived again by a later run, into files of its own).
archived_months = sa.Table(
    "archived_months",
    metadata,
    sa.Column("month", sa.Integer, primary_key=True),
    sa.Column("part", sa.SmallInteger, primary_key=True),
    sa.Column("sales", sa.BigInteger, nullable=False),
    sa.Column("returns", sa.BigInteger, nullable=False),
    sa.Column("sales_file", sa.String(200), nullable=False),
    sa.Column("sales_sha256", sa.String(64), nullable=False),
    sa.Column("returns_file", sa.String(200), nullable=False),
    sa.Column("returns_sha256", sa.String(64), nullable=False),
    sa.Column("archived_at", UTCDateTime, nullable=False),
)


def _archived(rollup: str) -> sa.Table:
    """What the archived sales and returns added to ``rollup``, by its key (no slots): ``check``
    adds it to what the raw rows left say, so archived months stay checked exactly."""
    return sa.Table(
        f"archived_{rollup}",
        metadata,
        *(
            sa.Column(k, sa.BigInteger if k.endswith("_id") else sa.Integer, primary_key=True)
            for k in ROLLUP_KEYS[rollup]
        ),
        *(sa.Column(c, sa.BigInteger, nullable=False) for c in ROLLUP_COLUMNS[rollup]),
    )


ARCHIVED = {rollup: _archived(rollup) for rollup in ROLLUP_KEYS}

# The dashboard's signed-in owners: a random token in the cookie, only its hash here. Signing out
# deletes the row, so a copied cookie dies with it; every worker and host sees the same sessions.
sessions = sa.Table(
    "sessions",
    metadata,
    sa.Column("token_hash", sa.String(64), primary_key=True),
    sa.Column("key_id", sa.Integer, nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("expires_at", UTCDateTime, nullable=False),
    sa.Index("sessions_expires_at_idx", "expires_at"),
)

# Change counters, one row per name ("catalog", "keys"): every process holds
# a copy of the catalog and of the API keys, and reloads when a counter moves.
versions = sa.Table(
    "versions",
    metadata,
    sa.Column("name", sa.String(32), primary_key=True),
    sa.Column("version", sa.BigInteger, nullable=False),
)

# The workers serving this database (PostgreSQL): each says every few seconds
# that it is alive and which schema revision its code expects, so that
# ``migrate`` can tell whether older code still serves.
workers = sa.Table(
    "workers",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("revision", sa.String(32), nullable=False),
    sa.Column("seen_at", UTCDateTime, nullable=False),
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
    sa.CheckConstraint("role IN ('owner', 'pos', 'metrics')", name="api_keys_role"),
    sa.CheckConstraint("(role = 'pos') = (store_id IS NOT NULL)", name="api_keys_pos_has_store"),
)
