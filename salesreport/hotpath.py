"""``POST /sales`` taken at the outermost layer: the tills' requests, most of the traffic.

Starlette's router would match every sale against each route in turn, and wrap
its handler in two more layers (the exception middleware, the request-response
adapter). This route runs the same handler (``api.post_sales``) straight from
``front.Front``, with the same answers: a ``ProblemError`` becomes its problem
document; anything else goes up to Starlette's error layer, a logged 500, as on
every route. What it saves is measured in BENCHMARKS.md.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from .problems import ProblemError, on_problem


class HotRoute:
    def __init__(self, route: Route) -> None:
        self.route = route
        self.methods = route.methods or set()

    def matches(self, scope: Scope) -> bool:
        return scope["path"] == self.route.path and scope["method"] in self.methods

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope["route"] = self.route  # what the router would have set: metrics name the route by it
        scope["endpoint"] = self.route.endpoint
        request = Request(scope, receive, send)
        try:
            response = await self.route.endpoint(request)
        except ProblemError as exc:
            response = await on_problem(request, exc)
        await response(scope, receive, send)
