"""The catalog's routes: ``GET /products``, ``/products/{id}``, ``/stores``."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from ..compression import Encoded
from ..ingestion import Catalog
from ..problems import PRIVATE, ProblemError, database_errors, invalid, json_response
from ..schemas import FieldError, parse_id
from ..service import encode_headers, respond, service
from .access import authenticate


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
    return await _json(request, body)


async def get_product(request: Request) -> Response:
    await authenticate(request)
    product_id = _id_param(request)
    catalog = await fresh_catalog(request)
    product = catalog.product(product_id, service(request).clock())
    if product is None:
        product = (await fresh_catalog(request, ask=True)).product(product_id, service(request).clock())
    if product is None:
        raise ProblemError(404, "Not Found", f"no product {product_id}")
    return json_response(product, headers=PRIVATE)


async def get_stores(request: Request) -> Response:
    await authenticate(request)
    include_retired = _flag(request, "include_retired")
    catalog = await fresh_catalog(request)
    return await _json(request, catalog.all_stores_json if include_retired else catalog.stores_json)


_JSON = encode_headers({"Content-Type": "application/json", **PRIVATE})


async def _json(request: Request, body: Encoded) -> Response:
    """One of the catalog's lists, encoded once per version of the catalog and of its prices in force
    (compressed too, if asked for)."""
    sent, coding = await body.choose(request)
    return respond(sent, 200, _JSON, coding)
