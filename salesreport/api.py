"""The HTTP API: routes, error responses, and the app's life cycle."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import ipaddress
import os
import re
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from . import config, db, drain, reports
from .auth import Key, KeyRing, Unauthenticated
from .changes import Changes
from .ingestion import Batcher, Catalog, Malformed, Rejected, Unavailable, check_sales, parse_sales
from .schemas import MAX_ERRORS, FieldError, Problem, encoder, parse_month
from .zones import zone

log = structlog.get_logger("salesreport.api")

MAX_BODY = 1024 * 1024
PROBLEM = "application/problem+json"


@dataclass
class Service:
    settings: config.Settings
    db: db.Database
    catalog: Catalog
    batcher: Batcher
    keys: KeyRing
    # The Alembic revision this code expects the database at.
    head_revision: str
    # The wall clock, injectable: tests pin it to any instant (a month's last minute, a DST change).
    clock: Callable[[], datetime] = lambda: datetime.now(UTC)
    draining: bool = False


class ProblemError(Exception):
    def __init__(
        self,
        status: int,
        title: str,
        detail: str,
        errors: list[FieldError] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.problem = Problem(status=status, title=title, detail=detail, errors=errors)
        self.headers = headers


def problem_response(problem: Problem, headers: Mapping[str, str] | None = None) -> Response:
    return Response(encoder.encode(problem), status_code=problem.status, media_type=PROBLEM, headers=headers)


def json_response(value: Any, status: int = 200) -> Response:
    return Response(encoder.encode(value), status_code=status, media_type="application/json")


def invalid(
    errors: list[FieldError], detail: str = "the request has invalid fields", total: int | None = None
) -> ProblemError:
    """A 422 naming at most MAX_ERRORS fields, and counting them all: an answer stays small whatever the body."""
    problem = ProblemError(422, "Unprocessable Content", detail, errors[:MAX_ERRORS])
    problem.problem.error_count = len(errors) if total is None else total
    return problem


def unavailable(exc: Unavailable) -> ProblemError:
    return ProblemError(503, "Service Unavailable", exc.detail, headers={"Retry-After": str(exc.retry_after)})


def service(request: Request) -> Service:
    svc: Service = request.app.state.service
    return svc


_last_down_warning = 0.0


def _database_down(event: str, exc: BaseException) -> ProblemError:
    """The 503 for a database that cannot be reached, logged once a second at
    most: an outage under load would otherwise write a line per request."""
    global _last_down_warning
    now = time.monotonic()
    if now - _last_down_warning >= 1:
        _last_down_warning = now
        log.warning(f"{event}: database unavailable", error=str(exc))
    return unavailable(Unavailable("the database is unavailable", retry_after=2))


@contextlib.contextmanager
def database_errors(event: str) -> Iterator[None]:
    """A database that cannot be reached answers 503; any other database
    error (a missing table, a bad query) is a bug, and goes on to be a 500."""
    try:
        yield
    except Exception as exc:
        if db.is_unavailable(exc):
            raise _database_down(event, exc) from None
        raise


@contextlib.asynccontextmanager
async def reading(request: Request) -> AsyncIterator[Any]:
    """A read connection; a database that cannot be reached answers 503."""
    with database_errors("read failed"):
        async with service(request).db.reader.connect() as conn:
            yield conn


async def authenticate(request: Request) -> Key | None:
    """The caller's key (None while no key exists); 401 without a valid one."""
    keys = service(request).keys
    with database_errors("cannot load API keys"):
        await keys.refresh()
    if not keys.protected and not _local(request):
        raise ProblemError(
            401,
            "Unauthorized",
            "no API key exists yet, so this service answers loopback clients only; "
            "create keys (python -m salesreport keys create --role owner) and send one",
            headers={"WWW-Authenticate": 'Bearer realm="salesreport"'},
        )
    try:
        key = keys.authenticate(request.headers.get("authorization"))
    except Unauthenticated as exc:
        raise ProblemError(
            401, "Unauthorized", str(exc), headers={"WWW-Authenticate": 'Bearer realm="salesreport"'}
        ) from None
    if key is not None:
        request.scope["salesreport.key_id"] = key.id
    return key


def _local(request: Request) -> bool:
    """Whether the request comes straight from this machine (not through a proxy)."""
    headers = request.headers
    if "forwarded" in headers or "x-forwarded-for" in headers:
        return False
    client = request.client
    if client is None:
        return False
    try:
        return ipaddress.ip_address(client.host).is_loopback
    except ValueError:
        return client.host == "localhost"


def forbidden(detail: str, errors: list[FieldError] | None = None) -> ProblemError:
    return ProblemError(403, "Forbidden", detail, errors)


async def owner_only(request: Request) -> None:
    key = await authenticate(request)
    if key is not None and key.role != "owner":
        raise forbidden("reports are for owner keys only")


# --- endpoints -----------------------------------------------------------------


async def fresh_catalog(request: Request, *, ask: bool = False) -> Catalog:
    catalog = service(request).catalog
    with database_errors("cannot load the catalog"):
        await catalog.refresh(ask=ask)
    return catalog


async def get_products(request: Request) -> Response:
    await authenticate(request)
    catalog = await fresh_catalog(request)
    return Response(catalog.products_json, media_type="application/json")


async def get_stores(request: Request) -> Response:
    await authenticate(request)
    catalog = await fresh_catalog(request)
    return Response(catalog.stores_json, media_type="application/json")


async def read_body(request: Request) -> bytes:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/json" and not content_type.endswith("+json"):
        raise ProblemError(415, "Unsupported Media Type", "send the sales as Content-Type: application/json")
    too_large = ProblemError(413, "Content Too Large", f"the body must be at most {MAX_BODY} bytes")
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > MAX_BODY:
        raise too_large
    chunks = []
    size = 0
    timeout = service(request).settings.body_timeout
    try:
        async with asyncio.timeout(timeout):
            async for chunk in request.stream():
                size += len(chunk)
                if size > MAX_BODY:
                    raise too_large
                chunks.append(chunk)
    except TimeoutError:
        raise ProblemError(408, "Request Timeout", f"the body did not arrive within {timeout:g} s") from None
    return b"".join(chunks)


async def post_sales(request: Request) -> Response:
    key = await authenticate(request)
    body = await read_body(request)
    now = service(request).clock()
    try:
        sales, is_array = await parse_sales(body)
    except Malformed as exc:
        raise ProblemError(400, "Bad Request", f"the body is not valid JSON: {exc}") from None
    except Rejected as exc:
        raise invalid(exc.errors, total=exc.total) from None
    if key is not None and key.role == "pos":
        others = [
            FieldError(
                field="store_id",
                index=i if is_array else None,
                message=f"this key may post for store {key.store_id} only",
            )
            for i, sale in enumerate(sales)
            if sale.store_id != key.store_id
        ]
        if others:
            raise forbidden("the key may not post sales for another store", others)
    errors = check_sales(sales, now, is_array)
    svc = service(request)
    unknown = svc.catalog.unknown(sales, is_array)
    if unknown:
        # The catalog may have changed since this process loaded it.
        unknown = (await fresh_catalog(request, ask=True)).unknown(sales, is_array)
    errors += unknown
    if errors:
        raise invalid(errors)
    undatable = svc.catalog.undatable(sales)
    if undatable:
        raise unavailable(Unavailable(undatable, retry_after=60))
    try:
        stored = await svc.batcher.submit(sales, is_array, now, request.scope.get("salesreport.request_id"))
    except Rejected as exc:
        raise invalid(exc.errors, total=exc.total) from None
    except Unavailable as exc:
        raise unavailable(exc) from None
    return json_response(stored.sales if is_array else stored.sales[0], 201 if stored.created else 200)


def _month_param(request: Request, *, default_current: bool) -> int | None:
    raw = request.query_params.get("month")
    if raw is None:
        if not default_current:
            return None
        svc = service(request)
        now = svc.clock().astimezone(zone(svc.settings.default_timezone))
        return now.year * 100 + now.month
    try:
        return parse_month(raw)
    except ValueError as exc:
        raise invalid([FieldError(field="month", message=str(exc))], "invalid query parameter") from None


async def get_top_stores(request: Request) -> Response:
    await owner_only(request)
    month = _month_param(request, default_current=True)
    assert month is not None
    async with reading(request) as conn:
        rows = await reports.top_stores(conn, month)
    return json_response(rows)


async def get_top_products(request: Request) -> Response:
    await owner_only(request)
    month = _month_param(request, default_current=False)
    async with reading(request) as conn:
        rows = await reports.top_products(conn, month)
    return json_response(rows)


async def health_live(request: Request) -> Response:
    return json_response({"status": "ok"})


READY_TIMEOUT = 2.0


async def health_ready(request: Request) -> Response:
    """200 only when this worker can take sales and answer reports: the
    database answers and its schema is the one this code expects, the catalog
    is loaded, and the writer is running and can begin a write. Otherwise 503,
    saying why."""
    svc = service(request)
    try:
        async with asyncio.timeout(READY_TIMEOUT):
            reason = await _not_ready(svc)
    except TimeoutError:
        reason = f"the database did not answer within {READY_TIMEOUT:g} s"
    if reason is not None:
        down = {"status": "unavailable", "reason": reason}
        return Response(encoder.encode(down), 503, {"Retry-After": "5"}, "application/json")
    body: dict[str, Any] = {"status": "ok"}
    if svc.catalog.unusable:
        body["warnings"] = [
            f"store {store_id}: {why}; its sales get 503" for store_id, why in sorted(svc.catalog.unusable.items())
        ]
    return json_response(body)


async def _not_ready(svc: Service) -> str | None:
    try:
        async with svc.db.reader.connect() as conn:
            revision = await db.schema_revision(conn)
    except Exception as exc:
        return f"the database cannot be read: {_kind(exc)}"
    if revision != svc.head_revision:
        return f"the database schema is at revision {revision}, this code needs {svc.head_revision}: run migrate"
    try:
        await svc.catalog.refresh()
    except Exception as exc:
        return f"the catalog cannot be loaded: {_kind(exc)}"
    if not svc.batcher.running:
        return "the sales writer is not running"
    try:
        await svc.batcher.probe()
    except Exception as exc:
        return f"the sales writer cannot write: {_kind(exc)}"
    return None


def _kind(exc: BaseException) -> str:
    """What went wrong, without the database's own words (they may quote data)."""
    return "unreachable" if db.is_unavailable(exc) else type(getattr(exc, "orig", exc)).__name__


async def openapi(request: Request) -> Response:
    from .openapi import document

    return json_response(document())


# --- errors ----------------------------------------------------------------------

_TITLES = {404: "Not Found", 405: "Method Not Allowed", 400: "Bad Request"}


async def on_problem(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ProblemError)
    return problem_response(exc.problem, exc.headers)


async def on_http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    title = _TITLES.get(exc.status_code, "Error")
    detail = {404: f"no such path: {request.url.path[:200]}", 405: f"{request.method} is not allowed here"}.get(
        exc.status_code, str(exc.detail)
    )
    return problem_response(Problem(status=exc.status_code, title=title, detail=detail), exc.headers)


async def on_error(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error", path=request.url.path, request_id=request.scope.get("salesreport.request_id"))
    return problem_response(Problem(status=500, title="Internal Server Error", detail="an unexpected error occurred"))


def head_revision() -> str:
    """The newest revision of the migrations shipped with this code."""
    from alembic.script import ScriptDirectory

    head = ScriptDirectory(str(Path(__file__).parent / "migrations")).get_current_head()
    assert head is not None
    return head


# --- the app -----------------------------------------------------------------------

routes = [
    Route("/products", get_products, methods=["GET"]),
    Route("/stores", get_stores, methods=["GET"]),
    Route("/sales", post_sales, methods=["POST"]),
    Route("/reports/top-stores", get_top_stores, methods=["GET"]),
    Route("/reports/top-products", get_top_products, methods=["GET"]),
    Route("/health/live", health_live, methods=["GET"]),
    Route("/health/ready", health_ready, methods=["GET"]),
    Route("/openapi.json", openapi, methods=["GET"]),
]


_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


_SHUTTING_DOWN = encoder.encode(
    Problem(status=503, title="Service Unavailable", detail="the service is shutting down; retry shortly")
)


class Front:
    """The outermost layer: request ids, the access log, and the drain.

    One log line per request, with a request id echoed in X-Request-ID; the
    line names the API key by id, never the key. While the service drains
    after SIGTERM, a new request gets 503 and every response closes its
    connection, so that clients move to another instance before it stops.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1")
        request_id = given if _REQUEST_ID.match(given) else os.urandom(8).hex()
        scope["salesreport.request_id"] = request_id
        started = time.perf_counter()
        status = 500
        svc: Service | None = getattr(scope["app"].state, "service", None)

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = [*message.get("headers", []), (b"x-request-id", request_id.encode())]
                if svc is not None and svc.draining:
                    headers.append((b"connection", b"close"))
                message["headers"] = headers
            await send(message)

        try:
            if svc is not None and svc.draining and scope["path"] != "/health/live":
                response = Response(_SHUTTING_DOWN, 503, {"Retry-After": "1"}, PROBLEM)
                await response(scope, receive, send_with_id)
            else:
                await self.app(scope, receive, send_with_id)
        finally:
            log.info(
                "request",
                request_id=request_id,
                method=scope["method"],
                path=scope["path"],
                status=status,
                ms=round((time.perf_counter() - started) * 1000, 2),
                key_id=scope.get("salesreport.key_id"),
            )


def create_app(settings: config.Settings | None = None, *, clock: Callable[[], datetime] | None = None) -> Starlette:
    """The ASGI app. ``clock`` (default: the wall clock, in UTC) is every "now" of a request."""
    settings = settings or config.load()
    config.configure_logging(settings.log_format)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        database = db.connect(settings)
        changes = Changes(database)
        changes.start()
        catalog = Catalog(database, changes)
        try:
            await catalog.refresh()
        except Exception as exc:  # /health/ready says so, and the next request tries again
            log.warning("the catalog could not be loaded at start-up", error=repr(exc))
        batcher = Batcher(
            database,
            catalog,
            max_sales=settings.batch_max_sales,
            flush_ms=settings.flush_ms,
            queue_max_sales=settings.queue_max_sales,
            write_timeout=settings.write_timeout,
            key_lifetime=settings.key_lifetime,
        )
        keys = KeyRing(database, changes)
        batcher.start()
        keys.start()
        svc = Service(settings, database, catalog, batcher, keys, head_revision())
        if clock is not None:
            svc.clock = clock
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
            await batcher.close()
            await keys.close()
            await changes.close()
            await database.dispose()

    return Starlette(
        routes=routes,
        lifespan=lifespan,
        middleware=[Middleware(Front)],
        exception_handlers={
            ProblemError: on_problem,
            HTTPException: on_http_exception,
            Exception: on_error,
        },
    )
