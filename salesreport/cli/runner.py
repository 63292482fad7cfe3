"""How a command works on the database: in an event loop of its own, with connections of its own."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import sqlalchemy as sa

from .. import config, db
from ..health import head_revision

MIGRATE = "run `python -m salesreport migrate`"


def missing_sqlite_file(settings: config.Settings) -> bool:
    """Whether ``DATABASE_URL`` names a SQLite file that does not exist (said on stderr): connecting would
    create an empty one (a misspelled DATABASE_URL, or the default, relative one, run from another
    directory)."""
    if not settings.is_sqlite:
        return False
    path = sa.engine.make_url(settings.database_url).database or ""
    if path in ("", ":memory:") or Path(path).is_file():
        return False
    print(f"no SQLite database at {path!r} (DATABASE_URL): {MIGRATE} to create it", file=sys.stderr)
    return True


def _run(coro: Callable[[db.Database], Awaitable[int]], settings: config.Settings, *, migrated: bool = True) -> int:
    """Run ``coro`` on the database. ``migrated``: it needs the schema this code ships (every command but
    ``migrate``): a database without it is refused with a message (exit code 1) rather than a traceback
    from its first statement, and a SQLite file that does not exist is not created (a misspelled
    DATABASE_URL, or the default, relative one, run from another directory)."""
    if migrated and missing_sqlite_file(settings):
        return 1

    async def main() -> int:
        database = db.connect(settings, command_timeout=None)  # a command works on whole tables
        try:
            if migrated:
                async with database.reader.connect() as conn:
                    revision = await db.schema_revision(conn)
                head = head_revision()
                if revision != head:
                    at = "has no schema" if revision is None else f"has the schema of revision {revision}"
                    print(f"the database {at}, this code needs {head}: {MIGRATE}", file=sys.stderr)
                    return 1
            return await coro(database)
        finally:
            await database.dispose()

    return asyncio.run(main())
