"""``create_app``: the service's parts, started and stopped with the app, and the layers a request goes through."""

from __future__ import annotations

import contextlib
import functools
import gc
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime

import structlog
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware

from .. import config, db, drain, logs, metrics
from ..auth import KeyRing
from ..changes import Changes
from ..db.replica import Reads
from ..front import Front
from ..health import head_revision
from ..hotpath import HotRoutes
from ..ingestion import Batcher, Catalog, ReturnPlan
from ..problems import ProblemError, on_error, on_http_exception, on_problem
from ..service import Service
from ..upkeep import Upkeep
from .routes import routes

log = structlog.get_logger("salesreport.api")


def create_app(settings: config.Settings | None = None, *, clock: Callable[[], datetime] | None = None) -> Starlette:
    """The ASGI app. ``clock`` (default: the wall clock, in UTC) is every "now" of a request."""
    settings = settings or config.load()
    logs.configure_logging(settings.log_format)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        metrics.worker_started()
        database = db.connect(settings)
        metrics.watch_pools(database)
        now = clock or (lambda: datetime.now(UTC))
        reads = Reads(database, now, max_lag=settings.max_lag, every=settings.lag_check)
        reads.start()
        changes = Changes(database, revision=head_revision())
        changes.start()
        catalog = Catalog(database, changes, reads=reads)
        try:
            await catalog.refresh()
        except Exception as exc:  # /health/ready says so, and the next request tries again
            log.warning("the catalog could not be loaded at start-up", error=repr(exc))
        writer = functools.partial(
            Batcher,
            database,
            catalog,
            max_sales=settings.batch_max_sales,
            flush_ms=settings.flush_ms,
            queue_max_sales=settings.queue_max_sales,
            write_timeout=settings.write_timeout,
            key_lifetime=settings.key_lifetime,
        )
        batcher = writer()
        returns = writer(plan=ReturnPlan, write=db.write_returns, what="returns")
        keys = KeyRing(database, changes, reads=reads)
        batcher.start()
        returns.start()
        keys.start()
        svc = Service(settings, database, catalog, batcher, returns, keys, head_revision(), reads, clock=now)
        upkeep = Upkeep(database, svc.clock, settings.key_lifetime)
        upkeep.start()
        app.state.service = svc
        restore = drain.install(svc)
        # What start-up allocated lives as long as the process: keep it out of
        # the collector's way, and collect young objects less often (latency).
        gc.collect()
        gc.freeze()
        gc.set_threshold(20_000, 20, 20)
        try:
            yield
        finally:
            restore()
            # Requests in flight have finished: commit every queued batch, then close.
            await upkeep.close()
            await batcher.close()
            await returns.close()
            await keys.close()
            await changes.close()
            await reads.close()
            await database.dispose()
            metrics.worker_stopped()
            logs.access.flush()

    return Starlette(
        routes=routes,
        lifespan=lifespan,
        middleware=[Middleware(Front, hot=HotRoutes(routes))],
        exception_handlers={
            ProblemError: on_problem,
            HTTPException: on_http_exception,
            Exception: on_error,
        },
    )
