"""Reports and pages kept in a worker's memory until what they show changes.

An entry is kept under the ``changes.Stamp`` taken before it was read, and
answered while the stamp is the same: a batch this worker committed changes
the stamp before its request is answered, so a report asked for after that
answer is read again and holds the sale; another worker's batch, within
``changes.BOUND`` (0.25 s). An entry read from a replica is kept only until the
replica's measured replay position moves, too (the stamp is the primary's, which
the replica may not have replayed yet when it was read).
Pages may ask for ``settle`` seconds: kept that long even as sales come in, so
that open dashboards cost one read per second per page kind and worker,
however busy the writers are.

While an entry is read, every request for it (under the same stamp) waits for
that one read: fifty pages polling at once cost one.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Generic, TypeVar

from .changes import BOUND, Stamp
from .db.replica import Source

T = TypeVar("T")

MAX_ENTRIES = 1000


@dataclass(frozen=True, slots=True)
class _Entry(Generic[T]):
    value: T
    source: Source
    stamp: Stamp
    replayed: int | None  # the replica's replay position before the read
    read_at: float  # monotonic


class Cache(Generic[T]):
    def __init__(
        self,
        now: Callable[[], datetime],
        *,
        replayed: Callable[[], int | None] = lambda: None,
        clock: Callable[[], float] = time.monotonic,
        settle: float = 0.0,
    ) -> None:
        """``now``: the wall clock (for how fresh an answer is); ``replayed``: the replica's replay
        position, as last measured (``db.replica.Reads.replayed``); ``clock``: a monotonic clock."""
        self.now = now
        self.replayed = replayed
        self.clock = clock
        self.settle = settle
        self._entries: dict[Hashable, _Entry[T]] = {}
        self._reading: dict[tuple[Hashable, Stamp], asyncio.Task[tuple[T, Source]]] = {}
        self.reads = 0  # entries read from the database, for tests and benchmarks

    async def get(
        self,
        key: Hashable,
        stamp: Stamp | None,
        read: Callable[[], Awaitable[tuple[T, Source]]],
        *,
        settled: bool = True,
    ) -> tuple[T, Source]:
        """The value under ``key`` and where it was read: kept, or ``read`` now. ``stamp``: what the
        data is at now (None: unknown, so nothing is kept or answered from memory); ``settled``: an
        entry older than the stamp may be answered within ``settle``."""
        if stamp is None:
            self.reads += 1
            return await read()
        entry = self._entries.get(key)
        if entry is not None and self._current(entry, stamp, settled):
            if entry.source.replica or entry.stamp != stamp:
                return entry.value, entry.source
            # Nothing changed since it was read, as of the stamp's last check (at most BOUND ago).
            return entry.value, Source(False, max(entry.source.as_of or self.now(), self.now() - _BOUND))
        flight = (key, stamp)
        task = self._reading.get(flight)
        if task is None:
            # A task of its own: a caller that goes away does not cancel the read the others wait for.
            task = asyncio.ensure_future(self._read(key, stamp, read))
            self._reading[flight] = task
            task.add_done_callback(lambda done: None if done.cancelled() else done.exception())
        return await asyncio.shield(task)

    def behind(self, key: Hashable, stamp: Stamp | None) -> float | None:
        """If the entry under ``key`` is answered only because it is within ``settle`` (it is older
        than ``stamp``): the seconds until it is read again; None otherwise."""
        entry = self._entries.get(key)
        if stamp is None or entry is None or entry.stamp == stamp:
            return None
        left = entry.read_at + self.settle - self.clock()
        return left if left > 0 else None

    def _current(self, entry: _Entry[T], stamp: Stamp, settled: bool = True) -> bool:
        if settled and self.clock() - entry.read_at <= self.settle:
            return True
        if entry.source.replica and (entry.replayed is None or entry.replayed != self.replayed()):
            return False
        return entry.stamp == stamp

    async def _read(
        self, key: Hashable, stamp: Stamp, read: Callable[[], Awaitable[tuple[T, Source]]]
    ) -> tuple[T, Source]:
        started, replayed = self.clock(), self.replayed()
        try:
            self.reads += 1
            value, source = await read()
        finally:
            del self._reading[(key, stamp)]
        if len(self._entries) >= MAX_ENTRIES:
            self._entries.clear()
        kept = self._entries.get(key)
        if kept is None or kept.read_at <= started:  # a later read (under a newer stamp) stays
            self._entries[key] = _Entry(value, source, stamp, replayed, started)
        return value, source


_BOUND = timedelta(seconds=BOUND)
