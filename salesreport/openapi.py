"""The OpenAPI 3.1 document, generated from the wire structs in ``schemas``."""

from __future__ import annotations

import functools
from typing import Any

import msgspec

from . import __version__
from .schemas import (
    MAX_ID,
    MONTH_PATTERN,
    MonthRevenue,
    Problem,
    Product,
    ProductDetail,
    ReturnOut,
    ReturnsIn,
    SaleDetail,
    SaleOut,
    SalesIn,
    Store,
    TopProduct,
    TopStore,
)

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
    "schema": {"type": "string", "pattern": MONTH_PATTERN, "examples": ["2026-11"]},
}
_LIMIT = {
    "name": "limit",
    "in": "query",
    "required": False,
    "description": "How many rows, 1..100; default 10",
    "schema": {"type": "integer", "minimum": 1, "maximum": 100, "default": 10},
}
_INCLUDE_RETIRED = {
    "name": "include_retired",
    "in": "query",
    "required": False,
    "description": 'true: list retired ones too (marked `"retired": true`); default false',
    "schema": {"type": "string", "enum": ["true", "false"]},
}
_ID = {"name": "id", "in": "path", "required": True, "schema": {"type": "integer", "minimum": 1}}
_FORMAT = {
    "name": "format",
    "in": "query",
    "required": False,
    "description": "csv: the same rows as CSV (UTF-8 with a BOM, a header row), as does `Accept: text/csv`",
    "schema": {"type": "string", "enum": ["json", "csv"]},
}
_STORE = {
    "name": "store_id",
    "in": "query",
    "required": False,
    "description": "One store's figures only",
    "schema": {"type": "integer", "minimum": 1, "maximum": MAX_ID},
}


# How fresh a read's data is (it may come from a replica a few seconds behind).
_FRESHNESS = {
    "X-Data-As-Of": {
        "schema": {"type": "string", "format": "date-time"},
        "description": "Everything committed by this instant is in the answer",
    },
    "X-Data-Lag-Seconds": {"schema": {"type": "integer"}, "description": "How far behind now the data is"},
    "X-Data-Source": {"schema": {"type": "string", "enum": ["primary", "replica"]}},
}


def _rows(description: str, name: str) -> dict[str, Any]:
    """A report's answer: JSON rows, or the same rows as CSV."""
    return {
        "200": {
            "description": description,
            "headers": _FRESHNESS,
            "content": {
                "application/json": {"schema": _array(name)},
                "text/csv": {"schema": {"type": "string"}},
            },
        }
    }


_BODY_ERRORS = {
    "400": _problem("The body is not valid JSON."),
    "408": _problem("The body did not arrive in time."),
    "413": _problem("The body is larger than 1 MiB."),
    "415": _problem("The body is not JSON."),
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
        "status": {"type": "string", "enum": ["ok", "degraded", "unavailable"]},
        "reason": {"type": "string"},
        "warnings": {"type": "array", "items": {"type": "string"}},
        "reads": {
            "type": "object",
            "description": "With a read replica: where reports are read, its lag, how often reads left it",
            "properties": {
                "source": {"type": "string", "enum": ["primary", "replica"]},
                "replica_lag_s": {"type": ["number", "null"]},
                "fallbacks": {"type": "integer"},
            },
        },
    },
    "required": ["status"],
}


@functools.cache
def document() -> dict[str, Any]:
    (sales_in, returns_in, *_outs), components = msgspec.json.schema_components(
        [
            SalesIn,
            ReturnsIn,
            SaleOut,
            SaleDetail,
            ReturnOut,
            Problem,
            Product,
            ProductDetail,
            Store,
            TopProduct,
            TopStore,
            MonthRevenue,
        ],
        ref_template=_REF,
    )
    sale_out = {"anyOf": [{"$ref": _REF.format(name="SaleOut")}, _array("SaleOut")]}
    return_out = {"anyOf": [{"$ref": _REF.format(name="ReturnOut")}, _array("ReturnOut")]}
    paths: dict[str, Any] = {
        "/products": {
            "get": {
                "summary": "Every product on sale, ordered by id, with the price in force now",
                "operationId": "listProducts",
                "parameters": [_INCLUDE_RETIRED],
                "responses": {**_ok("The catalog", _array("Product")), **_INVALID, **_COMMON},
            }
        },
        "/products/{id}": {
            "get": {
                "summary": "One product with its price history (the first price has `effective_from: null`)",
                "operationId": "getProduct",
                "parameters": [_ID],
                "responses": {**_ok("The product", {"$ref": _REF.format(name="ProductDetail")}), **_COMMON},
            }
        },
        "/stores": {
            "get": {
                "summary": "Every open store, ordered by id",
                "operationId": "listStores",
                "parameters": [_INCLUDE_RETIRED],
                "responses": {**_ok("The stores", _array("Store")), **_INVALID, **_COMMON},
            }
        },
        "/sales": {
            "post": {
                "summary": "Record one sale, or an array of 1..1000 sales (all or nothing)",
                "description": "A sale without `unit_price` is charged the catalog price in force at `sold_at` "
                "(default: when it arrives). A retired product or store is refused (422).",
                "operationId": "recordSales",
                "requestBody": {"required": True, "content": {"application/json": {"schema": sales_in}}},
                "responses": {
                    **_ok("Every sale was already stored (a replay); the sales as first stored", sale_out),
                    **_ok("At least one new sale was stored; the sales as stored", sale_out, "201"),
                    **_BODY_ERRORS,
                    **_INVALID,
                    **_FORBIDDEN,
                    **_COMMON,
                },
            }
        },
        "/sales/{id}": {
            "get": {
                "summary": "One sale with its returns (owner key, or the pos key of the store that sold it)",
                "operationId": "getSale",
                "parameters": [_ID],
                "responses": {
                    "200": {**_ok("The sale", {"$ref": _REF.format(name="SaleDetail")})["200"], "headers": _FRESHNESS},
                    **_FORBIDDEN,
                    **_COMMON,
                },
            }
        },
        "/returns": {
            "post": {
                "summary": "Record goods brought back: one return, or an array of 1..1000 (all or nothing)",
                "description": "The refund is the sale's price charged × the quantity returned. A sale can never "
                "get back more units than it sold (422 naming the sale and what is left), however many returns "
                "arrive at once. A return counts in the month (local) when it happens, at the store taking it "
                "back (default: the sale's store; for a pos key, its own). Idempotency keys are per store "
                "taking returns, apart from sales' keys; a replay is answered 200 with the return as first stored.",
                "operationId": "recordReturns",
                "requestBody": {"required": True, "content": {"application/json": {"schema": returns_in}}},
                "responses": {
                    **_ok("Every return was already stored (a replay); the returns as first stored", return_out),
                    **_ok("At least one new return was stored; the returns as stored", return_out, "201"),
                    **_BODY_ERRORS,
                    **_INVALID,
                    **_FORBIDDEN,
                    **_COMMON,
                },
            }
        },
        "/reports/top-stores": {
            "get": {
                "summary": "The ten stores with the highest net revenue in a month of their local calendar",
                "description": "Net revenue is what the store's sales took in (`gross`, at the prices charged) "
                "less the refunds of the returns it took back (`refunds`) in that month; `discounts` is how "
                "much under the catalog price its sales were charged. Any store with a sale or a return in the "
                "month is ranked.",
                "operationId": "topStores",
                "parameters": [{**_MONTH, "description": "YYYY-MM; default the current month"}, _LIMIT, _FORMAT],
                "responses": {**_rows("At most `limit` stores", "TopStore"), **_INVALID, **_FORBIDDEN, **_COMMON},
            }
        },
        "/reports/top-products": {
            "get": {
                "summary": "The ten best-selling products by units sold less returned, over all time or in one month",
                "operationId": "topProducts",
                "parameters": [
                    {**_MONTH, "description": "YYYY-MM; default all time (with store_id: the current month)"},
                    _LIMIT,
                    _STORE,
                    _FORMAT,
                ],
                "responses": {
                    **_rows("At most `limit` products", "TopProduct"),
                    **_INVALID,
                    **_FORBIDDEN,
                    **_COMMON,
                },
            }
        },
        "/reports/revenue-by-month": {
            "get": {
                "summary": "The chain's (or one store's) figures for each of the months up to `until`",
                "operationId": "revenueByMonth",
                "parameters": [
                    {**_MONTH, "name": "until", "description": "YYYY-MM, the last month; default the current one"},
                    {
                        "name": "months",
                        "in": "query",
                        "required": False,
                        "description": "How many months, 1..36; default 12",
                        "schema": {"type": "integer", "minimum": 1, "maximum": 36, "default": 12},
                    },
                    _STORE,
                    _FORMAT,
                ],
                "responses": {
                    **_rows("One row per month, oldest first, zero where nothing happened", "MonthRevenue"),
                    **_INVALID,
                    **_FORBIDDEN,
                    **_COMMON,
                },
            }
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics of every worker (owner or metrics key)",
                "description": "The Prometheus text format (0.0.4): requests by route and status, latency, sales and "
                "returns stored, batches, queues, commits, connection pools, key rejections.",
                "operationId": "metrics",
                "responses": {
                    "200": {
                        "description": "The samples",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    },
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
                    **_ok(
                        "Ready (`degraded`: the primary database cannot be reached, reports come from the replica); "
                        "`warnings` lists stores whose sales cannot be taken",
                        _READY,
                    ),
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
