"""The route table, and the routes that serve what other modules make: ``/metrics``, ``/openapi.json``."""

from __future__ import annotations

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from .. import metrics
from ..health import health_live, health_ready
from ..problems import PRIVATE, json_response
from ..web import pages, signin
from ..web.assets import static
from .access import authenticate
from .catalog import get_product, get_products, get_stores
from .reports import get_revenue_by_month, get_top_products, get_top_stores
from .sales import get_sale, post_returns, post_sales


async def get_metrics(request: Request) -> Response:
    await authenticate(request, roles=("owner", "metrics"))
    metrics.flush_requests()  # this worker's requests of this turn, first (on the event loop)
    # Reading every worker's file is blocking I/O: off the event loop.
    body, content_type = await run_in_threadpool(metrics.exposition)
    return Response(body, media_type=content_type, headers=PRIVATE)


async def openapi(request: Request) -> Response:
    from ..openapi import document

    return json_response(document())


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
    Route("/signin", signin.sign_in, methods=["POST"]),
    Route("/signin", signin.sign_in_again, methods=["GET"]),
    Route("/signout", signin.sign_out, methods=["POST"]),
    Route("/static/{name}", static, methods=["GET"]),
    Route("/health/live", health_live, methods=["GET"]),
    Route("/health/ready", health_ready, methods=["GET"]),
    Route("/openapi.json", openapi, methods=["GET"]),
    Route("/metrics", get_metrics, methods=["GET"]),
]
