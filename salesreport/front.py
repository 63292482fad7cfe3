"""The outermost layer of the app: request ids, the access log and request metrics, and the drain."""

from __future__ import annotations

import random
import re
import time
from typing import TYPE_CHECKING

from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from . import metrics
from .hotpath import HotRoutes
from .logs import access
from .problems import PROBLEM
from .schemas import Problem, encoder

if TYPE_CHECKING:
    from .service import Service

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


_SHUTTING_DOWN = encoder.encode(
    Problem(status=503, title="Service Unavailable", detail="the service is shutting down; retry shortly")
)


class Front:
    """The outermost layer: request ids, the access log and request metrics, and the drain.

    One log line per request, with a request id echoed in X-Request-ID; the
    line names the API key by id, never the key. Each request is counted by
    its route's template and status, and its time observed. While the service drains
    after SIGTERM, a new request gets 503 and every response closes its
    connection, so that clients move to another instance before it stops.
    """

    def __init__(self, app: ASGIApp, hot: HotRoutes | None = None) -> None:
        """``hot``: routes taken here, before Starlette's router (see ``hotpath``)."""
        self.app = app
        self.hot = hot

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        # The last one given, as a proxy that appends its own after the client's has it.
        headers = scope["headers"]
        given = next((value for name, value in reversed(headers) if name == b"x-request-id"), b"").decode("latin-1")
        # Not a secret, so not from the kernel's generator (a system call per request).
        request_id = given if _REQUEST_ID.match(given) else f"{random.getrandbits(64):016x}"
        scope["salesreport.request_id"] = request_id
        started = time.perf_counter()
        status = 500
        svc: Service | None = getattr(scope["app"].state, "service", None)
        scope["salesreport.service"] = svc

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
            elif self.hot is not None and (route := self.hot.find(scope)) is not None:
                await self.hot.serve(route, scope, receive, send_with_id)
            else:
                await self.app(scope, receive, send_with_id)
        finally:
            elapsed = time.perf_counter() - started
            route = scope.get("route")
            metrics.record_request(scope["method"], getattr(route, "path", None), status, elapsed)
            access.line(
                request_id=request_id,
                method=scope["method"],
                path=scope["path"],
                status=status,
                ms=round(elapsed * 1000, 2),
                key_id=scope.get("salesreport.key_id"),
            )
