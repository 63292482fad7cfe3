"""What each worker counts: requests, rejected keys, the writers, the replica, the pools, held polls.

prometheus-client is imported only when a worker records its first sample (``_get``): see the
package's docstring for why. Each label combination's child is looked up once and kept; a
request's counts are written once per turn of the event loop (``record_request``).
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from prometheus_client import Counter, Gauge

    from ..db import Database

MULTIPROC_DIR = "PROMETHEUS_MULTIPROC_DIR"

# Anything else a client sends is counted as OTHER: labels must not grow with what clients make up.
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
UNMATCHED = "unmatched"  # the route label of a request no route took (404, or refused while draining)
REJECTIONS = ("missing", "unknown", "revoked", "forbidden", "not_local")
WRITERS = ("sales", "returns")

_LATENCY = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_COMMIT = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_BATCH = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000)


class _Metrics:
    """The process's metrics, made on first use (in a worker, after ``serve`` set the directory)."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, values

        self.multiprocess = bool(os.environ.get(MULTIPROC_DIR))
        if self.multiprocess != getattr(values.ValueClass, "_multiprocess", False):
            raise RuntimeError(
                f"prometheus_client was imported before {MULTIPROC_DIR} was set (or unset): "
                "the metrics of this process would not reach the scrape"
            )
        self.registry = CollectorRegistry()
        # In multi-process mode a scrape reads the files, not a registry: registered metrics would show twice.
        self.into = into = None if self.multiprocess else self.registry
        self.requests = Counter(
            "salesreport_http_requests",
            "HTTP requests answered, by method, route template and status",
            ["method", "route", "status"],
            registry=into,
        )
        self.latency = Histogram(
            "salesreport_http_request_duration_seconds",
            "Time from a request's arrival to its answer's end, by method and route template",
            ["method", "route"],
            buckets=_LATENCY,
            registry=into,
        )
        self.stored = {
            what: Counter(f"salesreport_{what}_stored", f"New {what} written (committed)", registry=into)
            for what in WRITERS
        }
        self.replays = Counter(
            "salesreport_replays", "Items answered as replays of ones stored before", ["writer"], registry=into
        )
        self.batch_size = Histogram(
            "salesreport_batch_size", "Items per batch written", ["writer"], buckets=_BATCH, registry=into
        )
        self.commit = Histogram(
            "salesreport_commit_seconds",
            "Time to write and commit one batch",
            ["writer"],
            buckets=_COMMIT,
            registry=into,
        )
        self.queue = Gauge(
            "salesreport_queue_depth",
            "Items waiting for the writer, in the fullest worker's queue",
            ["writer"],
            multiprocess_mode="livemax",
            registry=into,
        )
        self.restarts = Counter(
            "salesreport_writer_restarts", "Writer tasks that died and were started again", ["writer"], registry=into
        )
        self.pool_in_use = Gauge(
            "salesreport_db_connections_in_use",
            "Connections checked out of each pool, summed over the workers",
            ["pool"],
            multiprocess_mode="livesum",
            registry=into,
        )
        self.pool_size = Gauge(
            "salesreport_db_pool_size",
            "Connections each pool may hold, summed over the workers",
            ["pool"],
            multiprocess_mode="livesum",
            registry=into,
        )
        self.polls_held = Gauge(
            "salesreport_live_polls_held",
            "Dashboard live polls held open until their page changes, summed over the workers",
            multiprocess_mode="livesum",
            registry=into,
        )
        rejections = Counter(
            "salesreport_key_rejections",
            "Requests refused for their API key: missing, unknown, revoked, forbidden (403), not_local (open mode)",
            ["reason"],
            registry=into,
        )
        self.rejections = {reason: rejections.labels(reason) for reason in REJECTIONS}
        self.replica_lag: Gauge | None = None
        self.read_fallbacks: Counter | None = None
        self._requests: dict[tuple[str, str, int], Any] = {}
        self._latencies: dict[tuple[str, str], Any] = {}

    def requests_child(self, method: str, route: str, status: int) -> Any:
        child = self._requests.get((method, route, status))
        if child is None:
            child = self._requests[(method, route, status)] = self.requests.labels(method, route, str(status))
        return child

    def latency_child(self, method: str, route: str) -> Any:
        child = self._latencies.get((method, route))
        if child is None:
            child = self._latencies[(method, route)] = self.latency.labels(method, route)
        return child


_metrics: _Metrics | None = None


def _get() -> _Metrics:
    global _metrics
    if _metrics is None:
        _metrics = _Metrics()
    return _metrics


def record_request(method: str, route: str | None, status: int, seconds: float) -> None:
    """One answered request: ``route`` is the template of the route that took it (None if none did).

    Counted in this process's memory and written to the metrics at the end of the event loop's turn
    (``flush_requests``), one write per label set and bucket for all the turn's requests: in
    multi-process mode each write is a lock, a process-id check and a write to a memory-mapped file,
    a sixth of a cached page's CPU when made three times per request (BENCHMARKS.md, "Notes"). So a
    request is in its worker's samples within the turn of the event loop that answered it (a turn
    that blocks delays it), and in a scrape of its own worker at once. On the event loop's thread
    only, as ``flush_requests``.
    """
    if method not in _METHODS:
        method = "OTHER"
    route = route or UNMATCHED
    pending = _pending
    key = (method, route, status)
    pending.requests[key] = pending.requests.get(key, 0) + 1
    pending.add(method, route, seconds)
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:  # no loop: at once
        flush_requests()
        return
    if pending.scheduled is not loop:  # the first of this turn (or a loop ended before its flush ran)
        pending.scheduled = loop
        loop.call_soon(flush_requests)


class _Pending:
    """Requests answered in this turn of the event loop, not yet written to the metrics."""

    def __init__(self) -> None:
        self.requests: dict[tuple[str, str, int], int] = {}
        # By (method, route): the sum of the durations, then the count in each bucket (the last: +Inf).
        self.latency: dict[tuple[str, str], list[float]] = {}
        self.scheduled: asyncio.AbstractEventLoop | None = None  # the loop a flush is due on

    def add(self, method: str, route: str, seconds: float) -> None:
        sums = self.latency.get((method, route))
        if sums is None:
            sums = self.latency[(method, route)] = [0.0] * (len(_LATENCY) + 2)
        sums[0] += seconds
        if seconds == seconds:  # as ``Histogram.observe``, a NaN is in no bucket
            # The first bucket whose bound is at least the duration, as ``Histogram.observe`` places it.
            sums[1 + bisect.bisect_left(_LATENCY, seconds)] += 1


_pending = _Pending()


def flush_requests() -> None:
    """Write the requests counted since the last call into the metrics (on the event loop's thread:
    ``record_request`` counts there without a lock)."""
    pending = _pending
    pending.scheduled = None
    if not pending.requests:
        return
    requests, pending.requests = pending.requests, {}
    latency, pending.latency = pending.latency, {}
    m = _metrics or _get()
    for (method, route, status), count in requests.items():
        m.requests_child(method, route, status).inc(count)
    for (method, route), sums in latency.items():
        # prometheus-client has no call for many observations at once: its histogram's own values
        # (pinned version; test_metrics checks each bucket) take the turn's sums.
        histogram = m.latency_child(method, route)
        histogram._sum.inc(sums[0])
        for bucket, observed in zip(histogram._buckets, sums[1:], strict=True):
            if observed:
                bucket.inc(observed)


def key_rejected(reason: str) -> None:
    """A request refused for its API key; ``reason`` is one of ``REJECTIONS``."""
    (_metrics or _get()).rejections[reason].inc()


class WriterMetrics:
    """One writer's metrics (``sales`` or ``returns``), each label's child looked up once."""

    def __init__(self, what: str) -> None:
        m = _get()
        self.stored = m.stored[what]
        self.replays = m.replays.labels(what)
        self.batch_size = m.batch_size.labels(what)
        self.commit = m.commit.labels(what)
        self.queue = m.queue.labels(what)
        self.restarts = m.restarts.labels(what)
        self.queue.set(0)


@contextlib.contextmanager
def poll_held() -> Iterator[None]:
    """Counts a dashboard's live poll in ``salesreport_live_polls_held`` while it is held: the open
    dashboards, and a way to see that a poll has reached its wait."""
    gauge = (_metrics or _get()).polls_held
    gauge.inc()
    try:
        yield
    finally:
        gauge.dec()


def set_replica_lag(seconds: float) -> None:
    """How far behind the primary the read replica is, in seconds, as last measured.

    ``salesreport_replica_lag_seconds`` (the most of any live worker) has no sample until the
    first call: a lag of 0 would say a replica is in step when none is measured.
    """
    m = _metrics or _get()
    if m.replica_lag is None:
        from prometheus_client import Gauge

        m.replica_lag = Gauge(
            "salesreport_replica_lag_seconds",
            "How far behind the primary the read replica is (the most of any live worker)",
            multiprocess_mode="livemax",
            registry=m.into,
        )
    m.replica_lag.set(seconds)


def count_read_fallback() -> None:
    """A worker's reads moved from the replica to the primary, the replica being too far behind or away
    (``salesreport_read_fallbacks_total``, no sample until the first call)."""
    m = _metrics or _get()
    if m.read_fallbacks is None:
        from prometheus_client import Counter

        m.read_fallbacks = Counter(
            "salesreport_read_fallbacks",
            "Times a worker's reads moved from the replica to the primary",
            registry=m.into,
        )
    m.read_fallbacks.inc()


def watch_pools(database: Database) -> None:
    """Keep ``salesreport_db_connections_in_use`` and ``salesreport_db_pool_size`` for each pool of ``database``."""
    import sqlalchemy as sa

    m = _get()
    seen: set[int] = set()
    for name, engine in (("reader", database.reader), ("writer", database.writer), ("control", database.control)):
        pool = engine.sync_engine.pool
        if id(pool) in seen or not isinstance(pool, sa.QueuePool):
            continue  # on PostgreSQL ``control`` shares the writer's pool
        seen.add(id(pool))
        m.pool_size.labels(name).set(pool.size())
        _follow(engine.sync_engine, pool, m.pool_in_use.labels(name))


def _follow(engine: Any, pool: Any, in_use: Gauge) -> None:
    from sqlalchemy import event

    in_use.set(pool.checkedout())

    def checked_out(*_: Any) -> None:
        in_use.set(pool.checkedout())

    def checked_in(*_: Any) -> None:
        # The event comes before the connection is back in the pool.
        in_use.set(pool.checkedout() - 1)

    event.listen(engine, "checkout", checked_out)
    event.listen(engine, "checkin", checked_in)
