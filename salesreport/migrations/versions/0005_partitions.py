"""Monthly partitions of the sales (PostgreSQL), their keys apart, and archived months.

- PostgreSQL: ``sales`` becomes a table partitioned by ``month`` (the store-local month of the
  reports): one partition per month that has sales, the months around now and ``AHEAD`` more, and
  a DEFAULT partition for any other month. Its primary key is ``(id, month)``; ids keep their
  sequence. The unique (store_id, idempotency_key) moves to ``sale_keys`` (see ``db.schema``),
  filled with every key of the sales.
- Both databases: ``archived_months`` and the archived sums (``archived_<rollup>``) for ``archive``.
  On SQLite nothing else changes.

Locks and time (PostgreSQL): ``sales`` is held ACCESS EXCLUSIVE from the start to the commit
(nothing reads or writes it meanwhile: stop the service, as for every upgrade), while every sale is
copied into its partition, the primary key is built on each partition and the keys are copied;
``returns`` and the rollups are not touched. Measured on the 2-core development machine: about 14 s
per million sales (see README, "Partitions, archive and backups").

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-28
"""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

from salesreport.db import partitions
from salesreport.db.schema import ROLLUP_COLUMNS, ROLLUP_KEYS, UTCDateTime

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

_COLUMNS = (
    "id, store_id, product_id, quantity, unit_price, amount, sold_at, received_at, month, idempotency_key, "
    "catalog_price, returned"
)


def upgrade() -> None:
    op.create_table(
        "archived_months",
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
    for rollup, keys in ROLLUP_KEYS.items():
        op.create_table(
            f"archived_{rollup}",
            *(sa.Column(k, sa.BigInteger if k.endswith("_id") else sa.Integer, primary_key=True) for k in keys),
            *(sa.Column(c, sa.BigInteger, nullable=False) for c in ROLLUP_COLUMNS[rollup]),
        )
    if op.get_bind().dialect.name == "postgresql":
        _partition_sales()


def _partition_sales() -> None:
    op.execute("LOCK TABLE sales IN ACCESS EXCLUSIVE MODE")
    op.execute("ALTER TABLE sales RENAME TO sales_unpartitioned")
    op.execute("ALTER TABLE sales_unpartitioned RENAME CONSTRAINT sales_pkey TO sales_unpartitioned_pkey")
    op.execute(
        "ALTER TABLE sales_unpartitioned RENAME CONSTRAINT sales_store_id_idempotency_key_key "
        "TO sales_unpartitioned_key"
    )
    op.execute("ALTER SEQUENCE sales_id_seq OWNED BY NONE")  # kept when the old table goes
    op.execute(
        """
        CREATE TABLE sales (
            id BIGINT NOT NULL DEFAULT nextval('sales_id_seq'),
            store_id BIGINT NOT NULL,
            product_id BIGINT NOT NULL,
            quantity INTEGER NOT NULL,
            unit_price BIGINT NOT NULL,
            amount BIGINT NOT NULL,
            sold_at TIMESTAMP WITH TIME ZONE NOT NULL,
            received_at TIMESTAMP WITH TIME ZONE NOT NULL,
            month INTEGER NOT NULL,
            idempotency_key VARCHAR(128),
            catalog_price BIGINT NOT NULL,
            returned INTEGER NOT NULL DEFAULT 0,
            CONSTRAINT sales_returned_within_quantity CHECK (returned BETWEEN 0 AND quantity)
        ) PARTITION BY RANGE (month)
        """
    )
    op.execute("ALTER SEQUENCE sales_id_seq OWNED BY sales.id")
    stored = {int(m) for m in op.get_bind().scalars(sa.text("SELECT DISTINCT month FROM sales_unpartitioned"))}
    for month in sorted(stored | set(partitions.months_around(datetime.now(UTC)))):
        end = partitions.add_months(month, 1)
        op.execute(f"CREATE TABLE {partitions.name(month)} PARTITION OF sales FOR VALUES FROM ({month}) TO ({end})")
    op.execute(f"CREATE TABLE {partitions.DEFAULT} PARTITION OF sales DEFAULT")
    # Rows first, then the index: building it once is faster than growing it row by row.
    op.execute(f"INSERT INTO sales ({_COLUMNS}) SELECT {_COLUMNS} FROM sales_unpartitioned")
    op.execute("ALTER TABLE sales ADD CONSTRAINT sales_pkey PRIMARY KEY (id, month)")
    op.execute(
        """
        CREATE TABLE sale_keys (
            store_id BIGINT NOT NULL,
            idempotency_key VARCHAR(128) NOT NULL,
            sale_id BIGINT NOT NULL,
            month INTEGER NOT NULL,
            received_at TIMESTAMP WITH TIME ZONE NOT NULL
        )
        """
    )
    op.execute(
        "INSERT INTO sale_keys (store_id, idempotency_key, sale_id, month, received_at) "
        "SELECT store_id, idempotency_key, id, month, received_at FROM sales_unpartitioned "
        "WHERE idempotency_key IS NOT NULL"
    )
    op.execute("ALTER TABLE sale_keys ADD CONSTRAINT sale_keys_pkey PRIMARY KEY (store_id, idempotency_key)")
    op.execute("CREATE INDEX sale_keys_received_at_idx ON sale_keys (received_at)")
    op.execute("DROP TABLE sales_unpartitioned")


def downgrade() -> None:
    raise NotImplementedError("0005 partitions the sales; going back means restoring a backup taken before it")
