"""The routes of fixed paths taken at the outermost layer: ``POST /sales`` (most of the traffic), the
reports, the catalog, the dashboard's month.

Starlette's router would match each request against every route in turn, and
wrap its handler in two more layers (the exception middleware, the
request-response adapter). A route whose path has no parameters is found here
by its method and path in one look-up, and its handler runs straight from
``front.Front`` with the same answers: a ``ProblemError`` or an
``HTTPException`` becomes its problem document; anything else goes up to
Starlette's error layer, a logged 500, as on every route. Anything else
(``HEAD``, a wrong method, a path with parameters, a trailing slash) goes on to
the router, as before. What it saves is measured in BENCHMARKS.md.
"""

from __future__ import annotations

from collections.abc import Iterable

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.routing import BaseRoute, Route
from starlette.types import Receive, Scope, Send

from .problems import ProblemError, on_http_exception, on_problem


class HotRoutes:
    def __init__(self, routes: Iterable[BaseRoute]) -> None:
        self._routes = {
            (method, route.path): route
            for route in routes
            if isinstance(route, Route) and "{" not in route.path
            for method in route.methods or ()
            if method != "HEAD"  # the router answers HEAD (without a body)
        }

    def find(self, scope: Scope) -> Route | None:
        return self._routes.get((scope["method"], scope["path"]))

    async def serve(self, route: Route, scope: Scope, receive: Receive, send: Send) -> None:
        scope["route"] = route  # what the router would have set: metrics name the route by it
        scope["endpoint"] = route.endpoint
        request = Request(scope, receive, send)
        try:
            response = await route.endpoint(request)
        except ProblemError as exc:
            response = await on_problem(request, exc)
        except HTTPException as exc:
            response = await on_http_exception(request, exc)
        await response(scope, receive, send)
