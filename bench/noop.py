"""The no-op ceiling: a Starlette POST endpoint that reads the body and answers 201.

Served by Granian with the settings of ``python -m salesreport serve`` (ASGI
interface, HTTP/1.1, backlog 2048, no access log), so that the gap between
this and ``POST /sales`` is what the service itself costs::

    python bench/noop.py --host 127.0.0.1 --port 8001 --workers 2
"""

from __future__ import annotations

import argparse

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

BODY = b'{"id":1,"status":"stored"}'


async def post_sales(request: Request) -> Response:
    await request.body()
    return Response(BODY, status_code=201, media_type="application/json")


async def ready(request: Request) -> Response:
    return Response(b'{"status":"ok"}', media_type="application/json")


app = Starlette(
    routes=[
        Route("/sales", post_sales, methods=["POST"]),
        Route("/health/ready", ready, methods=["GET"]),
    ]
)


def main() -> None:
    from granian import Granian
    from granian.constants import HTTPModes, Interfaces

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8001)
    p.add_argument("--workers", type=int, default=1)
    args = p.parse_args()
    # The same settings as `serve` in salesreport/cli.py.
    Granian(
        "noop:app",
        address=args.host,
        port=args.port,
        interface=Interfaces.ASGI,
        workers=args.workers,
        http=HTTPModes.http1,
        backlog=2048,
        log_access=False,
    ).serve()


if __name__ == "__main__":
    main()
