"""How a command works on the database: in an event loop of its own, with connections of its own."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from .. import config, db


def _run(coro: Callable[[db.Database], Awaitable[int]], settings: config.Settings) -> int:
    async def main() -> int:
        database = db.connect(settings, command_timeout=None)  # a command works on whole tables
        try:
            return await coro(database)
        finally:
            await database.dispose()

    return asyncio.run(main())
