"""The dashboard: a rollup of each store's products by month, and the signed-in owners' sessions.

``store_product_month`` is filled from the sales and returns already stored (slot 0).

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from salesreport.db.schema import ROLLUP_COLUMNS, ROLLUP_LIMIT, UTCDateTime

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    bound = " AND ".join(
        f"{c} BETWEEN -{ROLLUP_LIMIT} AND {ROLLUP_LIMIT}" for c in ROLLUP_COLUMNS["store_product_month"]
    )
    op.create_table(
        "store_product_month",
        sa.Column("store_id", sa.BigInteger, primary_key=True),
        sa.Column("product_id", sa.BigInteger, primary_key=True),
        sa.Column("month", sa.Integer, primary_key=True),
        sa.Column("slot", sa.SmallInteger, primary_key=True),
        sa.Column("quantity", sa.BigInteger, nullable=False),
        sa.Column("returned", sa.BigInteger, nullable=False, server_default=sa.text("0")),
        sa.Column("revenue", sa.BigInteger, nullable=False, server_default=sa.text("0")),
        sa.CheckConstraint(bound, name="store_product_month_within_limit"),
    )
    op.create_index("store_product_month_store_month_idx", "store_product_month", ["store_id", "month"])
    op.execute(
        "INSERT INTO store_product_month (store_id, product_id, month, slot, quantity, returned, revenue) "
        "SELECT store_id, product_id, month, 0, sum(quantity), sum(returned), sum(revenue) FROM ("
        "  SELECT store_id, product_id, month, quantity, 0 AS returned, amount AS revenue FROM sales"
        "  UNION ALL"
        "  SELECT store_id, product_id, month, -quantity, quantity, -amount FROM returns"
        ") AS t GROUP BY store_id, product_id, month"
    )
    op.create_table(
        "sessions",
        sa.Column("token_hash", sa.String(64), primary_key=True),
        sa.Column("key_id", sa.Integer, nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("expires_at", UTCDateTime, nullable=False),
    )
    op.create_index("sessions_expires_at_idx", "sessions", ["expires_at"])


def downgrade() -> None:
    op.drop_table("sessions")
    op.drop_table("store_product_month")
