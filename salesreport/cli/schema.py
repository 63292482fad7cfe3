"""``migrate``: create or upgrade the schema, unless workers of older code still serve it."""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import sqlalchemy as sa

from .. import config, db
from ..changes import SERVING, serving
from ..db import partitions
from ..health import head_revision
from .runner import _run

if TYPE_CHECKING:
    from alembic.config import Config


def _migrate(args: argparse.Namespace, settings: config.Settings) -> int:
    from alembic import command

    if not args.while_serving:
        workers = _workers_serving(settings)
        if workers:
            print(
                f"migrate: {workers} workers of this service are connected to the database (seen within the last "
                f"{SERVING.total_seconds():g} s). Code older than the "
                "new schema cannot write to it (its sales would be refused): stop the service, migrate, then start "
                "the new version. --while-serving migrates anyway.",
                file=sys.stderr,
            )
            return 1
    command.upgrade(alembic_config(settings), "head")
    print("schema is up to date")

    async def months_ahead(database: db.Database) -> int:
        async with database.writer.begin() as conn:
            if await partitions.partitioned(conn):
                made = await partitions.ensure_around(conn, datetime.now(UTC))
                if made:
                    print(f"partitions made: {', '.join(partitions.name(m) for m in made)}")
        return 0

    return _run(months_ahead, settings, migrated=False)


def alembic_config(settings: config.Settings) -> Config:
    """Alembic's configuration for this service's migrations and database."""
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(Path(__file__).parent.parent / "migrations"))
    cfg.set_main_option("sqlalchemy.url", settings.database_url.replace("%", "%%"))
    return cfg


def _workers_serving(settings: config.Settings) -> int:
    """How many workers serve this PostgreSQL database while its schema is behind this code's (each
    records itself as serving: see ``changes``); 0 on SQLite, which cannot tell."""
    if settings.is_sqlite:
        return 0

    async def count(database: db.Database) -> int:
        async with database.reader.connect() as conn:
            if await db.schema_revision(conn) in (None, head_revision()):
                return 0
            has_workers = await conn.run_sync(lambda sync: sa.inspect(sync).has_table("workers"))
            return len(await serving(conn)) if has_workers else 0

    return _run(count, settings, migrated=False)
