"""The reports' routes: top stores, top products, revenue by month, as JSON or CSV."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Hashable
from typing import Any

import msgspec
from sqlalchemy.ext.asyncio import AsyncConnection
from starlette.requests import Request
from starlette.responses import Response

from .. import reports
from ..compression import Encoded
from ..db.replica import Source
from ..export import encode_report, wants_csv
from ..problems import invalid
from ..schemas import (
    FieldError,
    MonthRevenue,
    TopProduct,
    TopStore,
    format_month,
    parse_count,
    parse_id,
    parse_month,
)
from ..service import RawHeaders, cached, encode_headers, freshness_headers, read, respond, service
from ..zones import zone
from .access import owner_only


async def report(
    request: Request,
    key: Hashable,
    work: Callable[[AsyncConnection], Awaitable[list[Any]]],
    csv: tuple[list[str], str] | None,
) -> Response:
    """A report's rows, read where reports are read (the replica, when it is close enough behind),
    as JSON or as CSV (``csv``: its columns and the file's name), saying how fresh they are. The
    encoded answer is kept under ``key`` (what the rows depend on) while the data is unchanged."""

    async def encoded() -> tuple[tuple[Encoded, RawHeaders], Source]:
        rows, source = await read(request, work)
        body, headers = encode_report(rows, csv)
        return (Encoded(body), encode_headers(headers)), source

    svc = service(request)
    (kept, headers), source = await cached(request, svc.reports, (key, csv is not None), encoded)
    body, coding = await kept.choose(request, vary=False)  # the report's own Vary names Accept-Encoding
    return respond(body, 200, headers, coding, encode_headers(freshness_headers(svc, source)))


def _limit_param(request: Request) -> int:
    raw = request.query_params.get("limit")
    if raw is None:
        return reports.LIMIT
    limit = parse_count(raw, reports.MAX_LIMIT)
    if limit is None:
        message = f"must be an integer from 1 to {reports.MAX_LIMIT}"
        raise invalid([FieldError(field="limit", message=message)], "invalid query parameter")
    return limit


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
    count = parse_count(request.query_params.get("months", "12"), 36)
    if count is None:
        raise invalid(
            [FieldError(field="months", message="must be an integer from 1 to 36")], "invalid query parameter"
        )
    where = "" if store_id is None else f"store-{store_id}-"
    csv = (
        (_FIELDS[MonthRevenue], f"revenue-by-month-{where}to-{format_month(last)}.csv") if wants_csv(request) else None
    )
    return await report(
        request,
        ("revenue-by-month", last, count, store_id),
        lambda conn: reports.revenue_by_month(conn, last, count, store_id),
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
