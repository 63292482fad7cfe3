"""A worker's daily upkeep of a partitioned PostgreSQL database: the months ahead, the expired keys.

At start and then every day each worker makes the partitions of the months around now (see
``db.partitions``) and deletes the idempotency keys that have outlived the key lifetime. Workers doing
it together are harmless: partitions are made under an advisory lock, and a key is deleted once.
Nothing here is needed for a sale to be stored (a month without a partition goes to the DEFAULT
one), so a failure is logged and tried again the next day. SQLite has nothing to keep.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from datetime import datetime, timedelta

import structlog

from . import db
from .db import partitions
from .db.engines import postgres_engine
from .ingestion.replay import live_after

log = structlog.get_logger("salesreport.upkeep")

EVERY = timedelta(days=1)


class Upkeep:
    def __init__(self, database: db.Database, clock: Callable[[], datetime], key_lifetime: timedelta) -> None:
        self._database = database
        self._clock = clock
        self._key_lifetime = key_lifetime
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._database.dialect == "postgresql":
            self._task = asyncio.create_task(self._run(), name="salesreport-upkeep")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def once(self) -> None:
        """Make the months' partitions and prune the expired keys, now."""
        now = self._clock()
        async with self._database.writer.begin() as conn:
            if not await partitions.partitioned(conn):
                return  # a schema older than this code's: /health/ready says so
            made = await partitions.ensure_around(conn, now)
        # On a connection of its own, without the requests' statement limit: the first prune after
        # migration 0005 may delete every key of the past, and the writer's few connections are the sales'.
        engine = postgres_engine(self._database.writer.url, 1)
        try:
            async with engine.begin() as conn:
                pruned = await partitions.prune_keys(conn, live_after(now, self._key_lifetime))
        finally:
            await engine.dispose()
        if made or pruned:
            log.info("upkeep", partitions_made=[partitions.name(m) for m in made], keys_pruned=pruned)

    async def _run(self) -> None:
        while True:
            try:
                await self.once()
            except Exception as exc:
                log.warning("upkeep failed; tried again in a day", error=repr(exc))
            await asyncio.sleep(EVERY.total_seconds())
