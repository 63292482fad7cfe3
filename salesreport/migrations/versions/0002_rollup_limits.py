"""Bound every rollup value, so that the sum of a key's slots always fits a BIGINT.

On SQLite an integer that overflows silently becomes a float, and a report
would show a clamped figure. With each slot bounded by 2**59, a batch that
would cross the bound is refused (its request fails alone with a 422) and the
sum over all slots stays exact.

Locks: on PostgreSQL, ADD CONSTRAINT holds an ACCESS EXCLUSIVE lock on each
rollup table while it checks its rows (a few thousand rows: milliseconds). On
SQLite the tables are copied (batch mode), equally small.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28
"""

from __future__ import annotations

from alembic import op

from salesreport.db.schema import ROLLUP_LIMIT

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_BOUNDED = {"store_month": ("revenue", "sales"), "product_month": ("quantity",), "product_total": ("quantity",)}


def upgrade() -> None:
    for table, columns in _BOUNDED.items():
        condition = " AND ".join(f"{c} BETWEEN -{ROLLUP_LIMIT} AND {ROLLUP_LIMIT}" for c in columns)
        with op.batch_alter_table(table) as batch:
            batch.create_check_constraint(f"{table}_within_limit", condition)


def downgrade() -> None:
    for table in _BOUNDED:
        with op.batch_alter_table(table) as batch:
            batch.drop_constraint(f"{table}_within_limit", type_="check")
