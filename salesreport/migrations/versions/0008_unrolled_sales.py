"""Lone sales not yet added to the rollups (``db.unrolled``).

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "unrolled_sales",
        sa.Column("sale_id", sa.BigInteger, nullable=False),
        sa.Column("store_id", sa.BigInteger, nullable=False),
        sa.Column("product_id", sa.BigInteger, nullable=False),
        sa.Column("month", sa.Integer, nullable=False),
        sa.Column("quantity", sa.BigInteger, nullable=False),
        sa.Column("amount", sa.BigInteger, nullable=False),
        sa.Column("discount", sa.BigInteger, nullable=False),
    )


def downgrade() -> None:
    # What is still here goes into the rollups first (slot 0), or the reports would lose it.
    for table, keys, columns, values in (
        ("store_month", "store_id, month", "revenue, sales, discounts", "sum(amount), count(*), sum(discount)"),
        ("product_month", "product_id, month", "quantity, revenue", "sum(quantity), sum(amount)"),
        ("product_total", "product_id", "quantity, revenue", "sum(quantity), sum(amount)"),
        ("store_product_month", "store_id, product_id, month", "quantity, revenue", "sum(quantity), sum(amount)"),
    ):
        updates = ", ".join(f"{c} = {table}.{c} + excluded.{c}" for c in columns.split(", "))
        op.execute(
            f"INSERT INTO {table} ({keys}, slot, {columns}) SELECT {keys}, 0, {values} FROM unrolled_sales "
            f"GROUP BY {keys} ON CONFLICT ({keys}, slot) DO UPDATE SET {updates}"
        )
    op.drop_table("unrolled_sales")
