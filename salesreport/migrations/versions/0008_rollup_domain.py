"""PostgreSQL: the rollups' bound as a domain, ``rollup_value``, instead of a CHECK per table.

The bound is the same (every value within ±``ROLLUP_LIMIT``; a batch that would cross it is
refused with the same SQLSTATE, 23514, and its request alone fails with a 422). What changes is
its cost. PostgreSQL turns a table's CHECK constraints from their stored text back into
expressions and plans them once per statement that writes the table, so a lone sale's statement,
which writes four rollups, paid for parsing four constraints every time: about a fifth of the
database's instructions for that statement (BENCHMARKS.md, "Notes"). A domain's constraint is kept
parsed in each backend's type cache.

SQLite keeps its CHECK constraints: it compiles them into each prepared statement.

Locks and time (PostgreSQL): the domain is created without its constraint, so that changing the
columns' type (bigint to a domain over bigint) rewrites nothing; adding the constraint then reads
each rollup table once to check its rows, under a SHARE lock (stop the service, as for every
upgrade). The rollups hold a row per key, month and slot, not per sale.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-30
"""

from __future__ import annotations

from alembic import op

from salesreport.db.schema import ROLLUP_COLUMNS, ROLLUP_DOMAIN, ROLLUP_LIMIT

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

_BOUND = f"BETWEEN -{ROLLUP_LIMIT} AND {ROLLUP_LIMIT}"


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(f"CREATE DOMAIN {ROLLUP_DOMAIN} AS bigint")
    for table, columns in ROLLUP_COLUMNS.items():
        changes = [f"DROP CONSTRAINT {table}_within_limit"]
        changes += [f"ALTER COLUMN {c} TYPE {ROLLUP_DOMAIN}" for c in columns]
        op.execute(f"ALTER TABLE {table} {', '.join(changes)}")
    op.execute(f"ALTER DOMAIN {ROLLUP_DOMAIN} ADD CONSTRAINT {ROLLUP_DOMAIN}_within_limit CHECK (VALUE {_BOUND})")


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for table, columns in ROLLUP_COLUMNS.items():
        changes = [f"ALTER COLUMN {c} TYPE bigint" for c in columns]
        condition = " AND ".join(f"{c} {_BOUND}" for c in columns)
        changes.append(f"ADD CONSTRAINT {table}_within_limit CHECK ({condition})")
        op.execute(f"ALTER TABLE {table} {', '.join(changes)}")
    op.execute(f"DROP DOMAIN {ROLLUP_DOMAIN}")
