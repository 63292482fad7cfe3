"""The HTTP API: the routes, who may call them, and the app's life cycle."""

from __future__ import annotations

import contextlib
import gc
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable
from datetime import UTC, datetime
from typing import Any

import msgspec
import structlog
from sqlalchemy.ext.asyncio import AsyncConnection
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from . import config, db, drain, logs, metrics, reports
from .auth import Key, KeyRing, Unauthenticated, is_loopback, names_loopback
from .changes import Changes
from .db.replica import Reads, Source
from .export import encode_report, wants_csv
from .front import Front
from .health import head_revision, health_live, health_ready
from .hotpath import HotRoutes
from .ingestion import (
    Batcher,
    Catalog,
    Malformed,
    Rejected,
    ReturnPlan,
    Unavailable,
    check_returns,
    check_sales,
    parse_returns,
    parse_sales,
)
from .problems import (
    ProblemError,
    database_errors,
    forbidden,
    invalid,
    json_response,
    on_error,
    on_http_exception,
    on_problem,
    unavailable,
)
from .schemas import FieldError, MonthRevenue, TopProduct, TopStore, format_month, parse_id, parse_month
from .service import Service, cached, freshness_headers, read, receive_body, service
from .upkeep import Upkeep
from .web import pages
from .web.assets import static
from .web.pages import session_key
from .web.sessions import COOKIE
from .zones import zone

log = structlog.get_logger("salesreport.api")

MAX_BODY = 1024 * 1024


async def report(
    request: Request,
    key: Hashable,
    work: Callable[[AsyncConnection], Awaitable[list[Any]]],
    csv: tuple[list[str], str] | None,
) -> Response:
    """A report's rows, read where reports are read (the replica, when it is close enough behind),
    as JSON or as CSV (``csv``: its columns and the file's name), saying how fresh they are. The
    encoded answer is kept under ``key`` (what the rows depend on) while the data is unchanged."""

    async def encoded() -> tuple[tuple[bytes, dict[str, str]], Source]:
        rows, source = await read(request, work)
        return encode_report(rows, csv), source

    svc = service(request)
    (body, headers), source = await cached(request, svc.reports, (key, csv is not None), encoded)
    return Response(body, headers={**headers, **freshness_headers(svc, source)})


# The roles of the API's keys; a metrics key reads /metrics only.
API_ROLES = ("owner", "pos")


async def authenticate(request: Request, roles: tuple[str, ...] = API_ROLES) -> Key | None:
    """The caller's key (None while no key exists); 401 without a valid one, 403 if its role is not in ``roles``."""
    keys = service(request).keys
    with database_errors("cannot load API keys"):
        await keys.refresh()
    if not keys.protected and not _local(request):
        metrics.key_rejected("not_local")
        raise ProblemError(
            401,
            "Unauthorized",
            "no API key exists yet, so this service answers loopback clients only; "
            "create keys (python -m salesreport keys create --role owner) and send one",
            headers={"WWW-Authenticate": 'Bearer realm="salesreport"'},
        )
    authorization = request.headers.get("authorization")
    if authorization is None and request.method == "GET" and COOKIE in request.cookies:
        # A report read from the dashboard (its CSV links): the signed-in owner's session.
        owner = await session_key(request)
        if owner is not None:
            request.scope["salesreport.key_id"] = owner.id
            return owner
    try:
        key = keys.authenticate(authorization)
    except Unauthenticated as exc:
        raise ProblemError(
            401, "Unauthorized", str(exc), headers={"WWW-Authenticate": 'Bearer realm="salesreport"'}
        ) from None
    if key is not None:
        request.scope["salesreport.key_id"] = key.id
        if key.role not in roles:
            raise forbidden(f"this endpoint is for {' and '.join(roles)} keys only, not {key.role} keys")
    return key


# Headers that proxies add. A proxy on this machine that adds none of them
# (a bare TCP relay, an SSH tunnel) cannot be told from a local client: this
# check is a safety net, and the real safeguard is to create keys.
_PROXY_HEADERS = {b"forwarded", b"x-forwarded-for", b"x-forwarded-host", b"x-real-ip", b"via", b"x-client-ip"}


def _local(request: Request) -> bool:
    """Whether the request comes straight from this machine (not through a proxy), sent to a loopback
    name: a page that a browser here loaded from elsewhere and whose name was then pointed at 127.0.0.1
    (DNS rebinding) still sends its own name as Host."""
    if any(name in _PROXY_HEADERS for name, _ in request.scope["headers"]):
        return False
    headers = request.headers
    return request.client is not None and is_loopback(request.client.host) and names_loopback(headers.get("host", ""))


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


def _flag(request: Request, name: str) -> bool:
    raw = request.query_params.get(name)
    if raw is None or raw == "false":
        return False
    if raw == "true":
        return True
    raise invalid([FieldError(field=name, message="must be true or false")], "invalid query parameter")


def _id_param(request: Request) -> int:
    raw = request.path_params["id"]
    value = parse_id(raw)
    if value is None:
        raise ProblemError(404, "Not Found", f"no such id: {raw[:40]!r}")
    return value


async def get_products(request: Request) -> Response:
    await authenticate(request)
    include_retired = _flag(request, "include_retired")
    catalog = await fresh_catalog(request)
    body = catalog.products_json(service(request).clock(), include_retired=include_retired)
    return Response(body, media_type="application/json")


async def get_product(request: Request) -> Response:
    await authenticate(request)
    product_id = _id_param(request)
    catalog = await fresh_catalog(request)
    product = catalog.product(product_id, service(request).clock())
    if product is None:
        product = (await fresh_catalog(request, ask=True)).product(product_id, service(request).clock())
    if product is None:
        raise ProblemError(404, "Not Found", f"no product {product_id}")
    return json_response(product)


async def get_stores(request: Request) -> Response:
    await authenticate(request)
    include_retired = _flag(request, "include_retired")
    catalog = await fresh_catalog(request)
    return Response(catalog.all_stores_json if include_retired else catalog.stores_json, media_type="application/json")


async def read_body(request: Request) -> bytes:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/json" and not content_type.endswith("+json"):
        raise ProblemError(415, "Unsupported Media Type", "send the sales as Content-Type: application/json")
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > MAX_BODY:
        raise _too_large()
    return await receive_body(request, MAX_BODY, _too_large, "body")


def _too_large() -> ProblemError:
    return ProblemError(413, "Content Too Large", f"the body must be at most {MAX_BODY} bytes")


async def _parsed(
    request: Request, parse: Callable[[bytes], Awaitable[tuple[list[Any], bool]]]
) -> tuple[list[Any], bool]:
    """The POST's items and whether they came as an array; 400 or 422 if the body is not such."""
    body = await read_body(request)
    try:
        return await parse(body)
    except Malformed as exc:
        raise ProblemError(400, "Bad Request", f"the body is not valid JSON: {exc}") from None
    except Rejected as exc:
        raise invalid(exc.errors, total=exc.total) from None


def _only_at(key: Key | None, items: list[Any], is_array: bool, message: str, detail: str) -> None:
    """A pos key acts for its own store only: 403 naming every item given for another
    (``message`` names the key's store as ``{store}``)."""
    if key is None or key.role != "pos":
        return
    others = [
        FieldError(field="store_id", index=i if is_array else None, message=message.format(store=key.store_id))
        for i, item in enumerate(items)
        if item.store_id is not None and item.store_id != key.store_id
    ]
    if others:
        raise forbidden(detail, others)


async def _unknown(request: Request, items: list[Any], is_array: bool) -> list[FieldError]:
    unknown = service(request).catalog.unknown(items, is_array)
    if unknown:
        # The catalog may have changed since this process loaded it.
        unknown = (await fresh_catalog(request, ask=True)).unknown(items, is_array)
    return unknown


async def _store(request: Request, batcher: Batcher, items: list[Any], is_array: bool, now: datetime) -> Response:
    """Hand the items to a batcher; 201 if any is new, 200 if every one is a replay."""
    try:
        stored = await batcher.submit(items, is_array, now, request.scope.get("salesreport.request_id"))
    except Rejected as exc:
        raise invalid(exc.errors, total=exc.total) from None
    except Unavailable as exc:
        raise unavailable(exc) from None
    return json_response(stored.items if is_array else stored.items[0], 201 if stored.created else 200)


async def post_sales(request: Request) -> Response:
    key = await authenticate(request)
    sales, is_array = await _parsed(request, parse_sales)
    now = service(request).clock()
    _only_at(
        key, sales, is_array, "this key may post for store {store} only", "the key may not post sales for another store"
    )
    errors = check_sales(sales, now, is_array) + await _unknown(request, sales, is_array)
    if errors:
        raise invalid(errors)
    return await _store(request, service(request).batcher, sales, is_array, now)


async def post_returns(request: Request) -> Response:
    key = await authenticate(request)
    items, is_array = await _parsed(request, parse_returns)
    now = service(request).clock()
    # A till takes goods back at its own store (any sale of the chain may come back there).
    _only_at(
        key,
        items,
        is_array,
        "this key may take returns at store {store} only",
        "the key may not take returns at another store",
    )
    if key is not None and key.role == "pos":
        for item in items:
            item.store_id = key.store_id
    errors = check_returns(items, now, is_array) + await _unknown(request, items, is_array)
    if errors:
        raise invalid(errors)
    return await _store(request, service(request).returns, items, is_array, now)


async def get_sale(request: Request) -> Response:
    key = await authenticate(request)
    sale_id = _id_param(request)
    # The till that posted a sale reads it back at once: from the primary, which has it.
    sale, source = await read(request, lambda conn: reports.sale(conn, sale_id), own_writes=True)
    if sale is None and source.replica:
        # The primary cannot be reached, and the replica may not have replayed the sale yet.
        raise ProblemError(
            503,
            "Service Unavailable",
            f"sale {sale_id} cannot be looked up now: the primary database cannot be reached",
            headers={"Retry-After": "2"},
        )
    if sale is None:
        raise ProblemError(404, "Not Found", f"no sale {sale_id}")
    if key is not None and key.role == "pos" and key.store_id != sale.store_id:
        raise forbidden(f"this key may read the sales of store {key.store_id} only")
    response = json_response(sale)
    response.headers.update(freshness_headers(service(request), source))
    return response


def _limit_param(request: Request) -> int:
    raw = request.query_params.get("limit")
    if raw is None:
        return reports.LIMIT
    if not raw.isascii() or not raw.isdigit() or not 1 <= int(raw) <= reports.MAX_LIMIT:
        message = f"must be an integer from 1 to {reports.MAX_LIMIT}"
        raise invalid([FieldError(field="limit", message=message)], "invalid query parameter")
    return int(raw)


def _month_param(request: Request, *, default_current: bool, name: str = "month") -> int | None:
    raw = request.query_params.get(name)
    if raw is None:
        if not default_current:
            return None
        svc = service(request)
        now = svc.clock().astimezone(zone(svc.settings.default_timezone))
        return now.year * 100 + now.month
    try:
        return parse_month(raw)
    except ValueError as exc:
        raise invalid([FieldError(field=name, message=str(exc))], "invalid query parameter") from None


async def get_top_stores(request: Request) -> Response:
    await owner_only(request)
    month = _month_param(request, default_current=True)
    assert month is not None
    limit = _limit_param(request)
    csv = (_FIELDS[TopStore], f"top-stores-{format_month(month)}.csv") if wants_csv(request) else None
    return await report(request, ("top-stores", month, limit), lambda conn: reports.top_stores(conn, month, limit), csv)


async def get_top_products(request: Request) -> Response:
    await owner_only(request)
    store_id = _store_param(request)
    month = _month_param(request, default_current=store_id is not None)
    limit = _limit_param(request)
    period = "all-time" if month is None else format_month(month)
    where = "" if store_id is None else f"store-{store_id}-"
    csv = (_FIELDS[TopProduct], f"top-products-{where}{period}.csv") if wants_csv(request) else None
    return await report(
        request,
        ("top-products", month, limit, store_id),
        lambda conn: reports.top_products(conn, month, limit, store_id),
        csv,
    )


async def get_revenue_by_month(request: Request) -> Response:
    await owner_only(request)
    store_id = _store_param(request)
    last = _month_param(request, default_current=True, name="until")
    assert last is not None
    raw = request.query_params.get("months", "12")
    if not raw.isascii() or not raw.isdigit() or not 1 <= int(raw) <= 36:
        raise invalid(
            [FieldError(field="months", message="must be an integer from 1 to 36")], "invalid query parameter"
        )
    where = "" if store_id is None else f"store-{store_id}-"
    csv = (
        (_FIELDS[MonthRevenue], f"revenue-by-month-{where}to-{format_month(last)}.csv") if wants_csv(request) else None
    )
    return await report(
        request,
        ("revenue-by-month", last, int(raw), store_id),
        lambda conn: reports.revenue_by_month(conn, last, int(raw), store_id),
        csv,
    )


def _store_param(request: Request) -> int | None:
    raw = request.query_params.get("store_id")
    if raw is None:
        return None
    value = parse_id(raw)
    if value is None:
        raise invalid([FieldError(field="store_id", message="not a store id")], "invalid query parameter")
    return value


_FIELDS = {
    struct: [f.encode_name for f in msgspec.structs.fields(struct)] for struct in (TopStore, TopProduct, MonthRevenue)
}


async def get_metrics(request: Request) -> Response:
    await authenticate(request, roles=("owner", "metrics"))
    # Reading every worker's file is blocking I/O: off the event loop.
    body, content_type = await run_in_threadpool(metrics.exposition)
    return Response(body, media_type=content_type)


async def openapi(request: Request) -> Response:
    from .openapi import document

    return json_response(document())


# --- the app -----------------------------------------------------------------------

routes = [
    Route("/products", get_products, methods=["GET"]),
    Route("/products/{id}", get_product, methods=["GET"]),
    Route("/stores", get_stores, methods=["GET"]),
    Route("/sales", post_sales, methods=["POST"]),
    Route("/sales/{id}", get_sale, methods=["GET"]),
    Route("/returns", post_returns, methods=["POST"]),
    Route("/reports/top-stores", get_top_stores, methods=["GET"]),
    Route("/reports/top-products", get_top_products, methods=["GET"]),
    Route("/reports/revenue-by-month", get_revenue_by_month, methods=["GET"]),
    Route("/", pages.dashboard, methods=["GET"]),
    Route("/stores/{id}", pages.store_page, methods=["GET"]),
    Route("/signin", pages.sign_in, methods=["POST"]),
    Route("/signin", pages.sign_in_again, methods=["GET"]),
    Route("/signout", pages.sign_out, methods=["POST"]),
    Route("/static/{name}", static, methods=["GET"]),
    Route("/health/live", health_live, methods=["GET"]),
    Route("/health/ready", health_ready, methods=["GET"]),
    Route("/openapi.json", openapi, methods=["GET"]),
    Route("/metrics", get_metrics, methods=["GET"]),
]


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
        batcher = Batcher(
            database,
            catalog,
            max_sales=settings.batch_max_sales,
            flush_ms=settings.flush_ms,
            queue_max_sales=settings.queue_max_sales,
            write_timeout=settings.write_timeout,
            key_lifetime=settings.key_lifetime,
        )
        returns = Batcher(
            database,
            catalog,
            max_sales=settings.batch_max_sales,
            flush_ms=settings.flush_ms,
            queue_max_sales=settings.queue_max_sales,
            write_timeout=settings.write_timeout,
            key_lifetime=settings.key_lifetime,
            plan=ReturnPlan,
            write=db.write_returns,
            what="returns",
        )
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
