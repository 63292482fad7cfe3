"""Prices as charged, price history, returns, net rollups, retired stores and products.

- ``prices`` takes over ``products.price``: each product's price so far becomes
  its first price, in force from the beginning (``BEGINNING``).
- ``sales.catalog_price`` is filled with ``unit_price`` (until now every sale
  was charged the catalog price); ``sales.returned`` starts at 0.
- ``returns`` is new.
- The rollups gain ``refunds`` and ``discounts`` (stores), ``returned`` and
  ``revenue`` (products); product revenue is recomputed from the sales, into
  slot 0.
- ``retired`` on products and stores starts false.

Locks and time: on PostgreSQL, filling ``sales.catalog_price`` rewrites every
sale (minutes for tens of millions of rows) under an ACCESS EXCLUSIVE lock:
run it with the service stopped. On SQLite the changed tables are copied.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from salesreport.db.schema import BEGINNING, ROLLUP_COLUMNS, ROLLUP_LIMIT, UTCDateTime

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def _zero() -> sa.TextClause:
    return sa.text("0")


def _limit(table: str, columns: tuple[str, ...]) -> str:
    return " AND ".join(f"{c} BETWEEN -{ROLLUP_LIMIT} AND {ROLLUP_LIMIT}" for c in columns)


def upgrade() -> None:
    prices = op.create_table(
        "prices",
        sa.Column("product_id", sa.BigInteger, primary_key=True),
        sa.Column("effective_from", UTCDateTime, primary_key=True),
        sa.Column("price", sa.BigInteger, nullable=False),
        sa.CheckConstraint("price > 0", name="prices_price_positive"),
    )
    assert prices is not None
    products = sa.table("products", sa.column("id", sa.BigInteger), sa.column("price", sa.BigInteger))
    op.execute(
        sa.insert(prices).from_select(
            ["product_id", "effective_from", "price"],
            sa.select(products.c.id, sa.literal(BEGINNING, UTCDateTime), products.c.price),
        )
    )
    with op.batch_alter_table("products") as batch:
        batch.drop_constraint("products_price_positive", type_="check")
        batch.drop_column("price")
        batch.add_column(sa.Column("retired", sa.Boolean, nullable=False, server_default=sa.false()))
    with op.batch_alter_table("stores") as batch:
        batch.add_column(sa.Column("retired", sa.Boolean, nullable=False, server_default=sa.false()))

    op.add_column("sales", sa.Column("catalog_price", sa.BigInteger, nullable=True))
    op.execute("UPDATE sales SET catalog_price = unit_price")
    with op.batch_alter_table("sales") as batch:
        batch.alter_column("catalog_price", existing_type=sa.BigInteger, nullable=False)
        batch.add_column(sa.Column("returned", sa.Integer, nullable=False, server_default=_zero()))
        batch.create_check_constraint("sales_returned_within_quantity", "returned BETWEEN 0 AND quantity")

    op.create_table(
        "returns",
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
    )
    op.create_index("returns_sale_id_idx", "returns", ["sale_id"])

    added = {"store_month": ("refunds", "discounts"), "product_month": ("returned", "revenue")}
    added["product_total"] = added["product_month"]
    for table, columns in added.items():
        with op.batch_alter_table(table) as batch:
            batch.drop_constraint(f"{table}_within_limit", type_="check")
            for column in columns:
                batch.add_column(sa.Column(column, sa.BigInteger, nullable=False, server_default=_zero()))
            batch.create_check_constraint(f"{table}_within_limit", _limit(table, ROLLUP_COLUMNS[table]))
    # Product revenue, which the rollups did not hold until now, from the sales (no returns yet).
    op.execute("DELETE FROM product_month")
    op.execute(
        "INSERT INTO product_month (product_id, month, slot, quantity, returned, revenue) "
        "SELECT product_id, month, 0, sum(quantity), 0, sum(amount) FROM sales GROUP BY product_id, month"
    )
    op.execute("DELETE FROM product_total")
    op.execute(
        "INSERT INTO product_total (product_id, slot, quantity, returned, revenue) "
        "SELECT product_id, 0, sum(quantity), 0, sum(amount) FROM sales GROUP BY product_id"
    )


def downgrade() -> None:
    raise NotImplementedError("0003 adds history (prices, returns) that 0002 has no place for: restore a backup")
