"""The probes: is the process up, and can this worker take sales and answer reports."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from . import db
from .ingestion import Unavailable
from .problems import json_response
from .schemas import encoder
from .service import Service, service


async def health_live(request: Request) -> Response:
    return json_response({"status": "ok"})


READY_TIMEOUT = 2.0


async def health_ready(request: Request) -> Response:
    """200 when this worker can take sales and answer reports: the database
    answers and its schema is the one this code expects, the catalog is
    loaded, and the writer is running and can begin a write. Otherwise 503,
    saying why, except that with a read replica configured a primary that
    cannot be reached gives 200 ``"degraded"``: the reports still answer
    from the replica, and sales get 503 with Retry-After."""
    svc = service(request)
    # Probes that arrive while one runs share its answer: a flood of them costs one probe at a time.
    if svc.readiness is None or svc.readiness.done():
        svc.readiness = asyncio.create_task(_probe(svc))
    reason = await asyncio.shield(svc.readiness)
    reads = svc.reads
    if reason is not None and not reads.primary_unreachable:
        down = {"status": "unavailable", "reason": reason}
        return Response(encoder.encode(down), 503, {"Retry-After": "5"}, "application/json")
    body: dict[str, Any] = {"status": "ok"}
    warnings = [f"store {store_id}: {why}; its sales get 503" for store_id, why in sorted(svc.catalog.unusable.items())]
    if reason is not None:
        # Every worker shares the primary: taking them all out of a load balancer would stop the
        # reports too, which the replica still answers.
        body = {"status": "degraded", "reason": f"{reason}; sales and returns get 503, reports come from the replica"}
    if reads.configured:
        body["reads"] = _reads(svc)
        if not reads.reports_on_replica:
            warnings.append("reports are read from the primary: the replica is unreachable or too far behind")
    if warnings:
        body["warnings"] = warnings
    return json_response(body)


def _reads(svc: Service) -> dict[str, Any]:
    """Where reports are read and how fresh they are."""
    reads = svc.reads
    return {
        "source": "replica" if reads.reports_on_replica else "primary",
        "replica_lag_s": None if reads.lag_seconds is None else round(reads.lag_seconds, 1),
        "fallbacks": reads.fallbacks,
    }


async def _probe(svc: Service) -> str | None:
    try:
        async with asyncio.timeout(READY_TIMEOUT):
            return await _not_ready(svc)
    except TimeoutError:
        return f"the database did not answer within {READY_TIMEOUT:g} s"


async def _not_ready(svc: Service) -> str | None:
    for attempt in (1, 2):
        try:
            async with svc.db.reader.connect() as conn:
                revision = await db.schema_revision(conn)
            break
        except Exception as exc:
            # After a restart of the database the pool's connections are dead: the first one found so
            # drops them all (SQLAlchemy's invalidation), and a new one tells whether it is back.
            if attempt == 1 and db.is_unavailable(exc):
                continue
            return f"the database cannot be read: {_kind(exc)}"
    if revision != svc.head_revision:
        return f"the database schema is at revision {revision}, this code needs {svc.head_revision}: run migrate"
    try:
        await svc.catalog.refresh(ask=True)  # as the database is now, not as last polled
    except Exception as exc:
        return f"the catalog cannot be loaded: {_kind(exc)}"
    if not svc.batcher.running:
        return "the sales writer is not running"
    if not svc.returns.running:
        return "the returns writer is not running"
    try:
        await svc.batcher.probe()
    except Exception as exc:
        return f"the sales writer cannot write: {_kind(exc)}"
    return None


def _kind(exc: BaseException) -> str:
    """What went wrong, without the database's own words (they may quote data)."""
    if isinstance(exc, Unavailable):
        return exc.detail
    return "unreachable" if db.is_unavailable(exc) else type(getattr(exc, "orig", exc)).__name__


def head_revision() -> str:
    """The newest revision of the migrations shipped with this code."""
    from alembic.script import ScriptDirectory

    head = ScriptDirectory(str(Path(__file__).parent / "migrations")).get_current_head()
    assert head is not None
    return head
