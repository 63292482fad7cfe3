"""Which database a read goes to: the streaming replica while it is close enough behind, else the primary.

Reports and the dashboard read the replica (``DATABASE_READ_URL``) while it is
at most ``max_lag`` seconds behind (once they left it, from the third measure in
a row that finds it so); reads that must see what was just written
(a sale read back by the till that posted it, a session just opened, the
catalog and the keys after a change notice) read the primary. A task per worker
measures the replica every ``every`` seconds and switches; requests never wait
for it, and a read that finds its database unreachable is tried once on the
other one at once.

How far behind: the primary's WAL position (``pg_current_wal_flush_lsn()``,
what it can have sent) is sampled with the time it was read; the replica has
replayed everything the primary had written at the time of the newest sample
at or below its replay position (``pg_last_wal_replay_lsn()``), so that time is
its ``as_of``, and the lag is now minus ``as_of``. On an idle primary the
position does not move and a replica that has replayed it is current (unlike
``now() - pg_last_xact_replay_timestamp()``, which grows while nothing is
written). While the primary cannot be reached no sample is taken: ``as_of``
stays where it was and the lag grows, so that the replica's answers say how
stale they may be; they are served all the same, being the only ones there are.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

import sqlalchemy as sa
import structlog
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from .. import metrics
from .engines import Database, is_unavailable, one_snapshot, sqlstate

log = structlog.get_logger("salesreport.replica")

T = TypeVar("T")

# A measure that takes longer than this counts as "unreachable".
PROBE_TIMEOUT = 2.0
# Measures in a row that find the replica fit before reads go (back) to it.
BACK_AFTER = 3
# Samples kept while the replica is behind (one per WAL position seen, at most one per measure).
MAX_SAMPLES = 4096
# A query cancelled by the replica's replay (a recovery conflict) is worth trying on the primary.
_RECOVERY_CONFLICTS = {"40001", "40P01"}
_PRIMARY = sa.text("SELECT (pg_current_wal_flush_lsn() - '0/0'::pg_lsn)::bigint")
_REPLICA = sa.text("SELECT pg_is_in_recovery(), (pg_last_wal_replay_lsn() - '0/0'::pg_lsn)::bigint")


@dataclass(frozen=True, slots=True)
class Source:
    """Where one read ran, and from when its data is: everything committed by ``as_of`` is in it
    (None: not known yet, a replica that never caught up while the primary answered)."""

    replica: bool
    as_of: datetime | None


class Reads:
    """The choice between the replica and the primary, for one worker.

    ``lag_seconds`` (None: unknown or no replica), ``fallbacks`` (times reads
    left the replica for the primary), ``on_replica``, ``primary_up`` and
    ``replica_up`` are what metrics and ``/health/ready`` show.
    """

    def __init__(self, database: Database, clock: Callable[[], datetime], *, max_lag: float, every: float) -> None:
        self.database = database
        self.clock = clock
        self.max_lag = max_lag
        self.every = every
        self.primary_up = True
        self.replica_up = False
        self.on_replica = False
        self.as_of: datetime | None = None
        # The replica's replay position (a WAL position) at the last measure; None: not known.
        self.replayed: int | None = None
        self.lag_seconds: float | None = None
        self.fallbacks = 0
        # Measures in a row that found the replica fit for reports (see ``check``).
        self._fit = 0
        # Failures found by reads: a measure begun before one of them is out of date.
        self._losses = 0
        self._samples: deque[tuple[int, datetime]] = deque()
        self._task: asyncio.Task[None] | None = None

    @property
    def configured(self) -> bool:
        return self.database.replica is not None

    @property
    def primary_unreachable(self) -> bool:
        """The primary cannot be reached and the replica answers: reads go to the replica,
        and what this worker holds in memory (catalog, keys) is the best there is."""
        return self.configured and not self.primary_up and self.replica_up

    @property
    def reports_on_replica(self) -> bool:
        """Whether reports are read from the replica now."""
        return self.on_replica or self.primary_unreachable

    def keeps(self, loaded: bool, error: BaseException | None = None) -> bool:
        """Whether a worker's copy of the catalog or the keys is served as it is, rather than
        reloaded (before trying) or refused (``error``: why a reload failed): while the primary
        cannot be reached and the replica answers. Every change is a write to the primary, so the
        copy is the newest this worker can know; a request would otherwise wait on the dead
        primary, or fail."""
        if error is not None and self.replica_up and is_unavailable(error):
            self._lost(replica=False, error=error)
        return loaded and self.primary_unreachable

    def start(self) -> None:
        if self.configured:
            self._task = asyncio.create_task(self._measure(), name="salesreport-replica-lag")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    # --- reads -----------------------------------------------------------------------

    async def read(
        self, work: Callable[[AsyncConnection], Awaitable[T]], *, own_writes: bool = False, snapshot: bool = False
    ) -> tuple[T, Source]:
        """Run ``work`` on a read connection: the replica's for reports, while it is close enough
        behind; the primary's when ``own_writes`` (unless it cannot be reached). If the database
        chosen cannot be reached, ``work`` runs on the other one; if neither can, the error is raised.

        ``snapshot``: on the primary, ``work``'s reads see the data as of one moment (see
        ``engines.one_snapshot``). Not on a replica: there a transaction left open between two reads
        is ended, connection and all, when the replay needs a lock it holds, which would read as the
        replica lost; its reads stay one snapshot each."""
        replica = self.primary_unreachable if own_writes else self.reports_on_replica
        try:
            return await self._on(work, replica=replica, snapshot=snapshot)
        except Exception as exc:
            if not self._worth_the_other(exc, replica=replica):
                raise
            if is_unavailable(exc):
                self._lost(replica=replica, error=exc)
        return await self._on(work, replica=not replica, snapshot=snapshot)

    def _worth_the_other(self, exc: BaseException, *, replica: bool) -> bool:
        if replica:
            return is_unavailable(exc) or sqlstate(exc) in _RECOVERY_CONFLICTS
        return self.replica_up and is_unavailable(exc)

    async def _on(
        self, work: Callable[[AsyncConnection], Awaitable[T]], *, replica: bool, snapshot: bool = False
    ) -> tuple[T, Source]:
        engine = self.database.replica if replica else self.database.reader
        assert engine is not None
        # The primary's data is as of the moment the read began; the replica's, as last measured.
        as_of = self.as_of if replica else self.clock()
        async with engine.connect() as conn:
            if snapshot and not replica:
                await one_snapshot(conn)
            value = await work(conn)
        return value, Source(replica, as_of)

    def lag(self, source: Source) -> float | None:
        """How many seconds behind ``source``'s data is now (None: unknown)."""
        if source.as_of is None:
            return None
        return max(0.0, (self.clock() - source.as_of).total_seconds())

    def _lost(self, *, replica: bool, error: BaseException) -> None:
        """A read found this database unreachable: the others go elsewhere until the next measure."""
        self._losses += 1
        if replica and self.replica_up:
            self.replica_up = False
            self._fit = 0
            self._switch(False, f"the replica cannot be read: {type(getattr(error, 'orig', error)).__name__}")
        elif not replica and self.primary_up:
            self.primary_up = False
            log.warning("the primary database cannot be reached", error=str(error))

    # --- measures ---------------------------------------------------------------------

    async def _measure(self) -> None:
        while True:
            try:
                await self.check()
            except Exception:  # a bug here must not end the measures
                log.exception("measuring the replica failed")
            await asyncio.sleep(self.every)

    async def check(self) -> None:
        """Measure both databases once, and move reads if need be."""
        now = self.clock()  # before the primary's position is read: as_of errs on the old side
        losses = self._losses
        flushed = await _ask(self.database.reader, _PRIMARY)
        assert self.database.replica is not None
        replayed = await _ask(self.database.replica, _REPLICA)
        if self._losses != losses:
            return  # a read found a database gone while this measure ran: the next one decides
        self._primary(not isinstance(flushed, BaseException))
        if not isinstance(flushed, BaseException):
            self._sample(int(flushed[0]), now)
        reason = None
        if isinstance(replayed, BaseException):
            self.replica_up = False
            reason = f"the replica cannot be read: {type(getattr(replayed, 'orig', replayed)).__name__}"
        elif not replayed[0]:
            self.replica_up = False
            reason = "DATABASE_READ_URL is not a standby (it is not in recovery)"
        else:
            self.replica_up = True
            self.replayed = int(replayed[1])
            self._replayed(self.replayed)
        self.lag_seconds = None if self.as_of is None or not self.replica_up else self.lag(Source(True, self.as_of))
        metrics.set_replica_lag(math.inf if self.lag_seconds is None else self.lag_seconds)
        # Without the primary, the replica is all there is, however far behind.
        if reason is None and self.primary_up:
            if self.lag_seconds is None:
                reason = "the replica has not caught up with the primary yet"
            elif self.lag_seconds > self.max_lag:
                reason = f"the replica is {self.lag_seconds:.1f} s behind (more than {self.max_lag:g} s)"
        # Left at the first measure that finds it too far, taken (back) after BACK_AFTER in a row that
        # do not: a replica hovering around the bound does not move the reads (and their caches) back
        # and forth at every measure. (A bound on the lag itself would not do: a measure's lag is only
        # as fine as the measures, and a bound below one measure's period would never be met.)
        self._fit = 0 if reason is not None else self._fit + 1
        self._switch(reason is None and (self.on_replica or self._fit >= BACK_AFTER), reason)

    def _primary(self, up: bool) -> None:
        if up != self.primary_up:
            self.primary_up = up
            if up:
                log.info("the primary database answers again")
            else:
                log.warning("the primary database cannot be reached")

    def _switch(self, on_replica: bool, reason: str | None) -> None:
        if on_replica == self.on_replica:
            return
        self.on_replica = on_replica
        if on_replica:
            log.info("reads moved to the replica", lag_s=self.lag_seconds)
        else:
            self.fallbacks += 1
            metrics.count_read_fallback()
            log.warning("reads moved to the primary", reason=reason, fallbacks=self.fallbacks)

    def _sample(self, lsn: int, at: datetime) -> None:
        if self._samples and self._samples[-1][0] == lsn:
            self._samples[-1] = (lsn, at)  # nothing written since: the position stands for a later time
            return
        self._samples.append((lsn, at))
        if len(self._samples) > MAX_SAMPLES:
            self._samples.popleft()  # as_of then only errs on the old side

    def _replayed(self, lsn: int) -> None:
        reached = None
        while self._samples and self._samples[0][0] <= lsn:
            reached = self._samples.popleft()[1]
        if reached is not None and (self.as_of is None or reached > self.as_of):
            self.as_of = reached


async def _ask(engine: AsyncEngine, query: sa.TextClause) -> Any:
    """The query's one row, or the exception that kept it from answering in time."""
    try:
        async with asyncio.timeout(PROBE_TIMEOUT), engine.connect() as conn:
            return (await conn.execute(query)).one()
    except Exception as exc:
        return exc
