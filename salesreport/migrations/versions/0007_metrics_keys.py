"""Keys of the role ``metrics``: they read ``GET /metrics`` and nothing else.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-28
"""

from __future__ import annotations

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def _roles(condition: str) -> None:
    # Batch mode: SQLite changes a constraint by copying the table.
    with op.batch_alter_table("api_keys") as batch:
        batch.drop_constraint("api_keys_role", type_="check")
        batch.create_check_constraint("api_keys_role", condition)


def upgrade() -> None:
    _roles("role IN ('owner', 'pos', 'metrics')")


def downgrade() -> None:
    op.execute("DELETE FROM api_keys WHERE role = 'metrics'")
    _roles("role IN ('owner', 'pos')")
