"""The catalog, the sales, their rollups, and the API keys.

Revision ID: 0001
Revises:
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from salesreport.db.schema import UTCDateTime

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "products",
        sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("price", sa.BigInteger, nullable=False),
        sa.CheckConstraint("price > 0", name="products_price_positive"),
    )
    op.create_table(
        "stores",
        sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("address", sa.String(500), nullable=False),
        sa.Column("timezone", sa.String(64), nullable=False),
    )
    op.create_table(
        "sales",
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
    op.create_table(
        "store_month",
        sa.Column("store_id", sa.BigInteger, primary_key=True),
        sa.Column("month", sa.Integer, primary_key=True),
        sa.Column("slot", sa.SmallInteger, primary_key=True),
        sa.Column("revenue", sa.BigInteger, nullable=False),
        sa.Column("sales", sa.BigInteger, nullable=False),
    )
    op.create_index("store_month_month_idx", "store_month", ["month"])
    op.create_table(
        "product_month",
        sa.Column("product_id", sa.BigInteger, primary_key=True),
        sa.Column("month", sa.Integer, primary_key=True),
        sa.Column("slot", sa.SmallInteger, primary_key=True),
        sa.Column("quantity", sa.BigInteger, nullable=False),
    )
    op.create_index("product_month_month_idx", "product_month", ["month"])
    op.create_table(
        "product_total",
        sa.Column("product_id", sa.BigInteger, primary_key=True),
        sa.Column("slot", sa.SmallInteger, primary_key=True),
        sa.Column("quantity", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "versions",
        sa.Column("name", sa.String(32), primary_key=True),
        sa.Column("version", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "api_keys",
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


def downgrade() -> None:
    for table in (
        "api_keys",
        "versions",
        "product_total",
        "product_month",
        "store_month",
        "sales",
        "stores",
        "products",
    ):
        op.drop_table(table)
