"""The OpenAPI 3.1 document, generated from the wire structs in ``schemas``."""

from __future__ import annotations

import functools
from typing import Any

import msgspec

from . import __version__
from .schemas import Problem, Product, SaleOut, SalesIn, Store, TopProduct, TopStore

_REF = "#/components/schemas/{name}"


def _problem(description: str, retry: bool = False) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": description,
        "content": {"application/problem+json": {"schema": {"$ref": _REF.format(name="Problem")}}},
    }
    if retry:
        response["headers"] = {"Retry-After": {"schema": {"type": "integer"}, "description": "seconds"}}
    return response


def _ok(description: str, schema: dict[str, Any], status: str = "200") -> dict[str, Any]:
    return {status: {"description": description, "content": {"application/json": {"schema": schema}}}}


def _array(name: str) -> dict[str, Any]:
    return {"type": "array", "items": {"$ref": _REF.format(name=name)}}


_MONTH = {
    "name": "month",
    "in": "query",
    "required": False,
    "schema": {"type": "string", "pattern": "^[0-9]{4}-(0[1-9]|1[0-2])$", "examples": ["2026-11"]},
}
_COMMON = {
    "401": _problem("No API key, or an unknown or revoked one (once any key exists)."),
    "503": _problem(
        "Not now: the database is unavailable or the service is busy; retry after Retry-After seconds.", retry=True
    ),
}
_FORBIDDEN = {"403": _problem("The API key may not do this.")}
_INVALID = {"422": _problem("Invalid fields: the first 100 named in `errors`, all counted in `error_count`.")}


_READY = {
    "type": "object",
    "properties": {
        "status": {"type": "string", "enum": ["ok", "unavailable"]},
        "reason": {"type": "string"},
        "warnings": {"type": "array", "items": {"type": "string"}},
    },
    "required": ["status"],
}


@functools.cache
def document() -> dict[str, Any]:
    (sales_in, *_outs), components = msgspec.json.schema_components(
        [SalesIn, SaleOut, Problem, Product, Store, TopProduct, TopStore], ref_template=_REF
    )
    sale_out = {"anyOf": [{"$ref": _REF.format(name="SaleOut")}, _array("SaleOut")]}
    paths: dict[str, Any] = {
        "/products": {
            "get": {
                "summary": "Every product, ordered by id",
                "operationId": "listProducts",
                "responses": {**_ok("The catalog", _array("Product")), **_COMMON},
            }
        },
        "/stores": {
            "get": {
                "summary": "Every store, ordered by id",
                "operationId": "listStores",
                "responses": {**_ok("The stores", _array("Store")), **_COMMON},
            }
        },
        "/sales": {
            "post": {
                "summary": "Record one sale, or an array of 1..1000 sales (all or nothing)",
                "operationId": "recordSales",
                "requestBody": {"required": True, "content": {"application/json": {"schema": sales_in}}},
                "responses": {
                    **_ok("Every sale was already stored (a replay); the sales as first stored", sale_out),
                    **_ok("At least one new sale was stored; the sales as stored", sale_out, "201"),
                    "400": _problem("The body is not valid JSON."),
                    "408": _problem("The body did not arrive in time."),
                    "413": _problem("The body is larger than 1 MiB."),
                    "415": _problem("The body is not JSON."),
                    **_INVALID,
                    **_FORBIDDEN,
                    **_COMMON,
                },
            }
        },
        "/reports/top-stores": {
            "get": {
                "summary": "The ten stores with the highest revenue in a month of their local calendar",
                "operationId": "topStores",
                "parameters": [{**_MONTH, "description": "YYYY-MM; default the current month"}],
                "responses": {**_ok("At most ten stores", _array("TopStore")), **_INVALID, **_FORBIDDEN, **_COMMON},
            }
        },
        "/reports/top-products": {
            "get": {
                "summary": "The ten best-selling products, over all time or in one month",
                "operationId": "topProducts",
                "parameters": [{**_MONTH, "description": "YYYY-MM; default all time"}],
                "responses": {
                    **_ok("At most ten products", _array("TopProduct")),
                    **_INVALID,
                    **_FORBIDDEN,
                    **_COMMON,
                },
            }
        },
        "/health/live": {
            "get": {
                "summary": "The process is up",
                "operationId": "live",
                "responses": _ok("Up", {"type": "object"}),
            }
        },
        "/health/ready": {
            "get": {
                "summary": "This worker can take sales and answer reports",
                "operationId": "ready",
                "responses": {
                    **_ok("Ready; `warnings` lists stores whose sales cannot be taken", _READY),
                    "503": {
                        "description": "Not ready; `reason` says why",
                        "headers": {"Retry-After": {"schema": {"type": "integer"}}},
                        "content": {"application/json": {"schema": _READY}},
                    },
                },
            }
        },
    }
    for path, item in paths.items():
        for operation in item.values():
            if not path.startswith("/health"):
                operation["security"] = [{"bearer": []}]
            operation["responses"].setdefault("404", _problem("No such path."))
            operation["responses"].setdefault("405", _problem("Method not allowed."))
    return {
        "openapi": "3.1.0",
        "info": {"title": "salesreport", "version": __version__},
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "description": "An API key, sr_…"}},
        },
    }
