"""The routes of sales and returns: ``POST /sales`` (the hot path), ``POST /returns``, ``GET /sales/{id}``."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from .. import headers, reports
from ..auth import Key
from ..ingestion import (
    Batcher,
    Malformed,
    Rejected,
    Unavailable,
    check_returns,
    check_sales,
    parse_returns,
    parse_sales,
)
from ..problems import PRIVATE, ProblemError, forbidden, invalid, json_response, unavailable
from ..schemas import FieldError
from ..service import freshness_headers, read, receive_body, service
from .access import authenticate
from .catalog import _id_param, fresh_catalog

MAX_BODY = 1024 * 1024


async def read_body(request: Request) -> bytes:
    content_type = (headers.first(request.scope, b"content-type")[0] or "").split(";")[0].strip().lower()
    if content_type != "application/json" and not content_type.endswith("+json"):
        raise ProblemError(415, "Unsupported Media Type", "send the sales as Content-Type: application/json")
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
    response = json_response(sale, headers=PRIVATE)
    response.headers.update(freshness_headers(service(request), source))
    return response
