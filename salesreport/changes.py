"""Knowing, in a worker, that another process changed the catalog or the keys.

Every change bumps a counter in the ``versions`` table (``db.bump_version``).
On PostgreSQL the same transaction sends a NOTIFY, which a listening
connection per worker receives the moment it commits; while that connection is
down, everything counts as changed. On SQLite a worker reads the counter itself
(a local read of a few microseconds, no thread hop) whenever it needs to know.

The listening connection also holds the worker's rollup *slot* (see ``db``): the
lowest slot that no other worker holds, as an advisory lock, so that N workers
write into N slots and the reports sum few rows.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import Iterator

import asyncpg
import structlog

from . import db

log = structlog.get_logger("salesreport.changes")

SLOT_LOCKS = 0x5A1E  # the advisory lock class of rollup slots


class Changes:
    def __init__(self, database: db.Database) -> None:
        self._url = database.writer.url
        self._sqlite: sqlite3.Connection | None = None
        self._dirty: set[str] = set()
        self._listening = False
        self._task: asyncio.Task[None] | None = None
        # Until a slot is claimed (and always on SQLite, which has one writer).
        self.slot = 0 if self._url.get_backend_name() == "sqlite" else db.writer_slot()

    def start(self) -> None:
        if self._url.get_backend_name() == "sqlite":
            self._sqlite = sqlite3.connect(self._url.database or "", check_same_thread=False)
        else:
            dsn = self._url.set(drivername="postgresql").render_as_string(hide_password=False)
            self._task = asyncio.create_task(self._listen(dsn), name="salesreport-changes")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._sqlite is not None:
            self._sqlite.close()

    def stale(self, name: str, loaded: int) -> bool:
        """Whether ``name`` may have changed since version ``loaded`` was read (-1: never read)."""
        if loaded < 0:
            # Never loaded, though perhaps being loaded: the caller must wait for that load, not
            # take an empty copy (no keys would mean an open service) for a fresh one.
            return True
        if self._sqlite is not None:
            try:
                row = self._sqlite.execute("SELECT version FROM versions WHERE name = ?", (name,)).fetchone()
            except sqlite3.Error:
                return True
            return (row[0] if row else 0) != loaded
        return not self._listening or name in self._dirty

    @contextlib.contextmanager
    def reloading(self, name: str) -> Iterator[None]:
        """Around a reload of ``name``: a change announced meanwhile marks it stale
        anew, and so does a reload that fails (it is tried again next time)."""
        self._dirty.discard(name)
        try:
            yield
        except BaseException:
            self._dirty.add(name)
            raise

    async def _claim_slot(self, conn: asyncpg.Connection) -> None:
        for slot in range(db.SLOTS):
            if await conn.fetchval("SELECT pg_try_advisory_lock($1, $2)", SLOT_LOCKS, slot):
                self.slot = slot
                return

    async def _listen(self, dsn: str) -> None:
        while True:
            try:
                conn = await asyncpg.connect(dsn, timeout=5)
            except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
                log.warning("change listener cannot connect", error=str(exc))
                await asyncio.sleep(1)
                continue
            lost = asyncio.Event()
            try:
                await conn.add_listener(db.CHANNEL, lambda _c, _pid, _channel, name: self._dirty.add(name))
                conn.add_termination_listener(lambda _conn, lost=lost: lost.set())
                await self._claim_slot(conn)
                # Whatever changed while nobody listened is unknown.
                self._dirty.update(db.VERSIONED)
                self._listening = True
                while not lost.is_set():
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(lost.wait(), 10)
                    if not lost.is_set():
                        await conn.execute("SELECT 1", timeout=5)  # notice a dead connection
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
                log.warning("change listener lost its connection", error=str(exc))
            finally:
                self._listening = False
                with contextlib.suppress(Exception):
                    await conn.close(timeout=1)
