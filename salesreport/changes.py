"""Knowing, in a worker, that another process changed the catalog or the keys; and saying that it serves.

Every change bumps a counter in the ``versions`` table (``db.bump_version``),
in the change's own transaction. On PostgreSQL each worker reads all the
counters every ``POLL`` seconds: one short query, the same directly and
through a transaction pooler (which cannot keep a LISTEN). A copy counts as
stale when its counter moved, and also whenever no read of its counter began
within ``BOUND`` seconds (the database is slow or away, the loop was busy):
then the request at hand reads the counter itself (and that read vouches for
the next ``BOUND`` seconds, so a stalled poller costs one read per
``BOUND``, not one per request). So a change, such as a revoked key, takes
effect on every worker of every host within ``BOUND`` of its commit. On
SQLite a worker looks whenever it needs to know, with no thread hop, at most
once per turn of its event loop (and ``SQLITE_REUSE``): ``PRAGMA
data_version`` (a few microseconds) says whether any other connection
committed since the last look, and only then are the counters read again.

The same counters say when what the reports show changed (``stamp``): the
``data`` counters (each batch bumps one, see ``db.DATA``) and the catalog's,
with the batches this worker committed, counted the moment they commit. A
report kept under a stamp is current while the stamp is the same
(``cache``): a worker's own sales count at once, other workers' within
``BOUND``.

On PostgreSQL the same task records the worker in the ``workers`` table every
``HEARTBEAT`` seconds, with the schema revision its code expects: ``migrate``
refuses to run while workers were seen within ``SERVING`` (see ``serving``).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import secrets
import socket
import sqlite3
import time
from collections.abc import Callable
from datetime import timedelta

import sqlalchemy as sa
import structlog
from sqlalchemy.ext.asyncio import AsyncConnection

from . import db

log = structlog.get_logger("salesreport.changes")

POLL = 0.1
BOUND = 0.25
# SQLite: how long one look at the counters serves a turn of the event loop, at most.
SQLITE_REUSE = 0.005
# What the reports show is at: the data counters' sum, the catalog's counter, this worker's batches.
Stamp = tuple[int, int, int]
HEARTBEAT = 5.0
# A worker not seen for this long is gone (stopped, or its host died).
SERVING = timedelta(seconds=3 * HEARTBEAT)
# Rows of workers gone longer than this are deleted.
_FORGOTTEN = timedelta(days=1)


class Changes:
    def __init__(
        self, database: db.Database, *, revision: str | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        """``revision``: the schema revision of this code; given, the worker is recorded as serving.
        ``clock``: a monotonic clock (injectable for tests)."""
        self._database = database
        self._url = database.writer.url
        self._sqlite: sqlite3.Connection | None = None
        # SQLite: every counter as last read, and the connection's data_version when it was read.
        self._sqlite_found: dict[str, int] | None = None
        self._sqlite_data_version = 0
        self._sqlite_this_turn = False  # they were read in this turn of the event loop
        self._sqlite_read_at = -math.inf  # when (the loop's clock)
        # Each counter's value, and when the read that found it began.
        self._versions: dict[str, tuple[int, float]] = {}
        self.clock = clock
        self._task: asyncio.Task[None] | None = None
        self.revision = revision
        self.worker = f"{socket.gethostname()[:40]}:{os.getpid()}:{secrets.token_hex(4)}"
        self._commits = 0
        self._polling: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()
        self._last: dict[str, int] = {}  # the counters at the last read, to tell a change

    def start(self) -> None:
        if self._url.get_backend_name() == "sqlite":
            self._sqlite = sqlite3.connect(self._url.database or "", check_same_thread=False)
            self._task = asyncio.create_task(self._watch_sqlite(), name="salesreport-changes")
        else:
            self._task = asyncio.create_task(self._run(), name="salesreport-changes")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            if self.revision is not None and self._sqlite is None:
                with contextlib.suppress(Exception):  # it would be forgotten after SERVING anyway
                    async with asyncio.timeout(2), self._database.writer.begin() as conn:
                        await conn.execute(sa.delete(db.workers).where(db.workers.c.id == self.worker))
        if self._sqlite is not None:
            self._sqlite.close()

    def stale(self, name: str, loaded: int, *, since: float | None = None) -> bool:
        """Whether ``name`` may have changed since version ``loaded`` was read (-1: never read).

        ``since`` (``clock``): also when no read of the counter began at or after that moment.
        """
        if loaded < 0:
            # Never loaded, though perhaps being loaded: the caller must wait for that load, not
            # take an empty copy (no keys would mean an open service) for a fresh one.
            return True
        if self._sqlite is not None:
            try:
                return self._sqlite_versions().get(name, 0) != loaded
            except sqlite3.Error:
                return True
        version, read_at = self._versions.get(name, (0, -math.inf))
        return self.clock() - read_at > BOUND or version != loaded or (since is not None and read_at < since)

    def committed(self) -> None:
        """This worker committed a batch: what the reports show changed (before its requests are answered)."""
        self._commits += 1
        self._sqlite_this_turn = False  # the batch's own counter: read again, so that it changes once
        self.wake()

    def news(self) -> asyncio.Event:
        """An event set at the next change of the counters, of this worker's data or of its state (take
        it before reading what may change, then wait for it: a change in between is not missed)."""
        return self._changed

    def wake(self) -> None:
        """Set the event of ``news`` (a change, or the worker begins to drain)."""
        event, self._changed = self._changed, asyncio.Event()
        event.set()

    def _moved(self, found: dict[str, int]) -> None:
        if found != self._last:
            self._last = found
            self.wake()

    async def _watch_sqlite(self) -> None:
        while True:
            with contextlib.suppress(sqlite3.Error):  # the next look tries again
                self._moved(self._sqlite_versions())
            await asyncio.sleep(POLL)

    async def stamp(self) -> Stamp | None:
        """What the reports' data and the catalog are at, now; None if it cannot be known (the database
        is away). On PostgreSQL a copy older than ``BOUND`` is read again first (one read for all
        the requests that need it)."""
        if self._sqlite is not None:
            try:
                found = self._sqlite_versions()
            except sqlite3.Error:
                return None
            return db.data_version(found), found.get("catalog", 0), self._commits
        now = self.clock()
        if any(now - self._versions.get(name, (0, -math.inf))[1] > BOUND for name in (db.DATA, "catalog")):
            if self._polling is None or self._polling.done():
                self._polling = asyncio.ensure_future(self.poll())
            try:
                await asyncio.shield(self._polling)
            except Exception:
                return None
        return self._versions[db.DATA][0], self._versions["catalog"][0], self._commits

    def _sqlite_versions(self) -> dict[str, int]:
        """Every counter, as of this turn of the event loop. A look starts a read transaction (10-20% of
        the loop's time for a report served from memory, which looked twice: the keys, then the data),
        so the counters are looked at once per turn, and at most ``SQLITE_REUSE`` apart: a change another
        process commits counts from the next turn on (the requests of this one arrived before it), or
        that much later in a long turn; the batches of this worker at once (``committed``). The table
        itself is read only when another connection committed since the last look (``PRAGMA
        data_version``; this connection never writes)."""
        assert self._sqlite is not None
        try:
            loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:  # no loop running: no turn to keep them for
            loop = None
        now = loop.time() if loop is not None else math.inf
        if self._sqlite_this_turn and self._sqlite_found is not None and now - self._sqlite_read_at < SQLITE_REUSE:
            return self._sqlite_found
        (data_version,) = self._sqlite.execute("PRAGMA data_version").fetchone()
        if self._sqlite_found is None or data_version != self._sqlite_data_version:
            self._sqlite_found = dict(self._sqlite.execute("SELECT name, version FROM versions").fetchall())
            self._sqlite_data_version = data_version
        if loop is not None:
            loop.call_soon(self._next_turn)
            self._sqlite_this_turn, self._sqlite_read_at = True, now
        return self._sqlite_found

    def _next_turn(self) -> None:
        self._sqlite_this_turn = False

    def seen(self, name: str, version: int, started: float) -> None:
        """A read of ``name``'s counter that began at ``started`` (``clock``) found ``version``."""
        if started > self._versions.get(name, (0, -math.inf))[1]:
            self._versions[name] = (version, started)

    async def poll(self) -> None:
        """Read the counters now; raises if the database cannot be read."""
        started = self.clock()
        v = db.versions
        async with self._database.control.connect() as conn:
            found = {name: version for name, version in await conn.execute(sa.select(v.c.name, v.c.version))}
        for name in db.VERSIONED:
            self.seen(name, found.get(name, 0), started)
        self.seen(db.DATA, db.data_version(found), started)
        self._moved(found)

    async def _run(self) -> None:
        failing = False
        beaten = -math.inf
        while True:
            try:
                await self.poll()
                if failing:
                    log.info("reading the change counters again")
                failing = False
            except Exception as exc:  # until it answers again, every copy counts as stale
                if not failing:
                    log.warning("cannot read the change counters", error=repr(exc))
                failing = True
            if self.revision is not None and self.clock() - beaten >= HEARTBEAT:
                beaten = self.clock()
                try:
                    await self._beat(self.revision)
                except Exception as exc:
                    log.warning("cannot record this worker as serving", error=repr(exc))
            await asyncio.sleep(POLL)

    async def _beat(self, revision: str) -> None:
        w = db.workers
        async with self._database.writer.begin() as conn:
            now = sa.func.now()
            stmt = db.upsert(conn, w).values(id=self.worker, revision=revision, seen_at=now)
            await conn.execute(stmt.on_conflict_do_update(index_elements=["id"], set_={"seen_at": now}))
            await conn.execute(sa.delete(w).where(w.c.seen_at < now - _FORGOTTEN))


async def serving(conn: AsyncConnection) -> list[str]:
    """The schema revisions of the workers seen serving within ``SERVING`` (PostgreSQL), one per worker."""
    w = db.workers
    rows = await conn.scalars(sa.select(w.c.revision).where(w.c.seen_at >= sa.func.now() - SERVING))
    return list(rows)
