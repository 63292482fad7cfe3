"""Group commit: one writer task per process writes whatever is pending in one transaction.

A request hands its validated sales to the process's ``Batcher`` and waits.
The batcher's task takes everything pending, writes it with the rollups in one
transaction (``plan.BatchPlan`` decides, ``db.write_batch`` writes), commits,
and only then answers each request: an acknowledged sale is durable. A request
whose sales cannot be stored (a conflicting replay) fails alone; its
batch-mates are written without it.

No request waits forever: each has a deadline (``write_timeout``), after which
it is answered 503 (its sales are then either written by a batch that already
took them, all of them, or never); a task that dies fails what it held and is
started again.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections import deque
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
import structlog

from .. import db, metrics
from ..schemas import FieldError
from .catalog import Catalog
from .errors import Rejected, Unavailable
from .plan import BatchPlan, Outcome, Raced, Request, Stored

log = structlog.get_logger("salesreport.ingestion")

# Unique violation, serialization failure, deadlock: another writer got there
# first. (SQLite cannot race: its writer holds the database from the first look.)
_RETRYABLE_SQLSTATES = {"23505", "40001", "40P01"}
_ATTEMPTS = 3


class Batcher:
    def __init__(
        self,
        database: db.Database,
        catalog: Catalog,
        *,
        max_sales: int,
        flush_ms: float,
        queue_max_sales: int,
        write_timeout: float = 10.0,
        key_lifetime: timedelta = timedelta(days=30),
        plan: Callable[..., Any] = BatchPlan,
        write: Callable[[db.Database, Any, int], Awaitable[object]] = db.write_batch,
        what: str = "sales",
    ) -> None:
        """A batcher of sales by default; of returns with ``plan=ReturnPlan, write=db.write_returns``."""
        self.db = database
        self.catalog = catalog
        self.max_sales = max_sales
        self.flush_seconds = flush_ms / 1000
        self.queue_max_sales = queue_max_sales
        self.write_timeout = write_timeout
        self.key_lifetime = key_lifetime
        self._plan = plan
        self._write_job = write
        self.what = what
        self.restarts = 0
        self._queue: deque[Request] = deque()
        self._queued_sales = 0
        self._in_flight: list[Request] = []
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._reaper: asyncio.TimerHandle | None = None
        self._closing = False
        self._metrics = metrics.WriterMetrics(what)

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"salesreport-batcher-{self.what}")
        self._task.add_done_callback(self._stopped)

    def _stopped(self, task: asyncio.Task[None]) -> None:
        """Whatever ended the task, nobody waits for it; unless closing, it starts again."""
        error = None if task.cancelled() else task.exception()
        waiting = [*self._in_flight, *self._queue]
        self._in_flight = []
        self._queue.clear()
        if self._reaper is not None:
            self._reaper.cancel()
            self._reaper = None
        self._queued_sales = 0
        self._metrics.queue.set(0)
        for request in waiting:
            if not request.future.done():
                request.future.set_exception(Unavailable(f"the {self.what} writer stopped; retry", retry_after=1))
        if self._closing:
            return
        self.restarts += 1
        self._metrics.restarts.inc()
        log.error(
            f"the {self.what} writer stopped; starting it again",
            error=repr(error) if error else "cancelled",
            failed_requests=len(waiting),
            restarts=self.restarts,
        )
        self.start()

    async def close(self) -> None:
        """Refuse new sales, write everything queued, then stop."""
        self._closing = True
        self._wakeup.set()
        if self._task is not None:
            await asyncio.wait([self._task])  # however it ended

    async def probe(self) -> None:
        """Return once the writer could begin a write (for /health/ready); raises otherwise."""
        if self.db.sqlite_writer is not None:
            await self.db.sqlite_writer.probe()
            return
        async with self.db.writer.connect() as conn:
            # A standby, or a primary set read-only, answers reads but refuses every batch.
            if await conn.scalar(sa.text("SELECT current_setting('transaction_read_only')")) == "on":
                raise Unavailable("the database takes no writes (read-only)")

    async def submit(
        self, items: list[Any], is_array: bool, received_at: datetime, request_id: str | None = None
    ) -> Stored:
        """Store ``items``; return them as stored (new, or replays of ones stored before)."""
        if self._closing:
            raise Unavailable("the service is shutting down", retry_after=1)
        if not self.running:
            raise Unavailable(f"the {self.what} writer is not running", retry_after=5)
        if self._queued_sales + len(items) > self.queue_max_sales:
            raise Unavailable(f"too many {self.what} waiting to be written", retry_after=1)
        loop = asyncio.get_running_loop()
        request = Request(items, is_array, received_at, request_id, deadline=loop.time() + self.write_timeout)
        request.future = loop.create_future()
        self._queue.append(request)
        self._queued_sales += len(items)
        self._metrics.queue.set(self._queued_sales)
        self._wakeup.set()
        if self._reaper is None:
            self._reaper = loop.call_at(request.deadline, self._reap)
        # Shielded: if the client goes away, its sales are still written (or not) whole, and its retry is a replay.
        stored: Stored = await asyncio.shield(request.future)
        return stored

    def _reap(self) -> None:
        """Answer 503 to the requests whose deadline passed (one timer for all of them: the oldest's)."""
        self._reaper = None
        loop = asyncio.get_running_loop()
        now = loop.time()
        late = Unavailable(
            f"the {self.what} were not written within {self.write_timeout:g} s; retry with the same idempotency keys",
            retry_after=2,
        )
        waiting = [*self._in_flight, *self._queue]
        for request in waiting:
            if request.deadline <= now and not request.future.done():
                request.abandoned = True  # if no batch took it yet, none will
                request.future.set_exception(late)
        pending = [r.deadline for r in waiting if not r.future.done()]
        if pending:
            self._reaper = loop.call_at(min(pending), self._reap)

    async def _run(self) -> None:
        while True:
            if not self._queue:
                if self._closing:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            if self._queued_sales < self.max_sales and self.flush_seconds > 0 and not self._closing:
                # Let concurrent requests join this batch.
                await asyncio.sleep(self.flush_seconds)
            batch: list[Request] = []
            size = 0
            while self._queue and (not batch or size + len(self._queue[0].items) <= self.max_sales):
                request = self._queue.popleft()
                self._queued_sales -= len(request.items)
                if request.abandoned or request.future.done():
                    continue
                batch.append(request)
                size += len(request.items)
            self._metrics.queue.set(self._queued_sales)
            if not batch:
                continue
            self._metrics.batch_size.observe(size)
            self._in_flight = batch
            await self._write(batch)
            self._in_flight = []

    async def _write(self, batch: list[Request]) -> None:
        outcomes = await self._outcomes(batch)
        written = [outcome.new for outcome in outcomes if isinstance(outcome, Stored)]
        if written:
            # Before any request is answered: a report asked for after the answer is read again (a
            # replay too: its sale may be another worker's, stored a moment ago).
            self.catalog.changes.committed()
            # Counted whether or not their requests still wait (one may have timed out meanwhile).
            new = sum(sum(flags) for flags in written)
            self._metrics.stored.inc(new)
            self._metrics.replays.inc(sum(map(len, written)) - new)
        for request, outcome in zip(batch, outcomes, strict=True):
            if request.future.done():
                continue
            if isinstance(outcome, Exception):
                request.future.set_exception(outcome)
            else:
                request.future.set_result(outcome)
                if not all(outcome.new):
                    ids = {f"{self.what[:-1]}_ids": outcome.replayed_ids}
                    log.info("replay answered", request_id=request.request_id, **ids)

    async def _outcomes(self, batch: list[Request]) -> list[Outcome]:
        """Each request's answer; every request gets one, whatever happened."""
        for attempt in range(1, _ATTEMPTS + 1):
            try:
                await self.catalog.refresh()
                plan = self._plan(batch, self.catalog, look_up=attempt > 1, key_lifetime=self.key_lifetime)
                started = time.perf_counter()
                outcomes: list[Outcome] = await self._write_job(self.db, plan, db.writer_slot(self.db))  # type: ignore[assignment]
                self._metrics.commit.observe(time.perf_counter() - started)
                return outcomes
            except Exception as exc:
                retry = isinstance(exc, Raced) or db.sqlstate(exc) in _RETRYABLE_SQLSTATES or db.is_partition_race(exc)
                if retry and attempt < _ATTEMPTS:
                    # Another writer stored one of these keys after we looked:
                    # the next attempt looks them up and judges them.
                    log.info("batch raced another writer, retrying", attempt=attempt)
                    continue
                if _refused_data(exc):
                    if len(batch) > 1:
                        # Some request holds a value the database refuses: write
                        # each request alone, so that only that one fails.
                        log.warning("batch refused by the database, writing its requests one by one", error=str(exc))
                        return [(await self._outcomes([request]))[0] for request in batch]
                    log.warning(f"{self.what} refused by the database", request_id=batch[0].request_id, error=str(exc))
                    return [
                        Rejected([FieldError(field="body", message="the database refused a value of this request")])
                    ]
                if isinstance(exc, Raced) or db.is_unavailable(exc) or db.sqlstate(exc) in _RETRYABLE_SQLSTATES:
                    log.warning("batch not written: database unavailable", error=str(exc))
                    return [Unavailable(f"the {self.what} could not be stored now", retry_after=2)] * len(batch)
                # A bug or a schema that is not what this code expects: a 500, logged with the requests' ids.
                log.exception("batch failed", request_ids=[r.request_id for r in batch])
                return [exc] * len(batch)
        raise AssertionError("unreachable")


def _refused_data(exc: BaseException) -> bool:
    """A data or integrity error: the values are at fault, and a retry would fail alike."""
    if isinstance(exc, sa.exc.DataError | sa.exc.IntegrityError | sqlite3.DataError | sqlite3.IntegrityError):
        return True
    if isinstance(exc, OverflowError):  # a driver refusing an integer
        return True
    state = db.sqlstate(exc)
    return state is not None and state[:2] in ("22", "23")
