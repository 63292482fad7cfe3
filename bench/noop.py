"""The no-op ceiling: a Starlette POST endpoint that reads the body and answers 201.

Served by Granian with exactly the settings of ``python -m salesreport serve``
(ASGI, HTTP/1.1, backlog, HTTP/1 settings, workers...): they are captured by
running the CLI's own serve command with a stand-in for Granian, so that this
ceiling follows any change there. The gap between this and ``POST /sales`` is
what the service itself costs. Give it the service's DATABASE_URL (on SQLite,
``serve`` runs one worker only)::

    DATABASE_URL=postgresql://... python bench/noop.py --host 127.0.0.1 --port 8001 --workers 2
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

ROOT = Path(__file__).resolve().parent.parent

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


def serve_settings(host: str, port: int, workers: int) -> dict[str, Any]:
    """The keyword arguments ``python -m salesreport serve`` gives Granian (its target aside)."""
    import granian

    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from salesreport import cli, config

    captured: dict[str, Any] = {}

    class Capture:
        def __init__(self, target: str, **kwargs: Any) -> None:
            captured.update(kwargs)

        def serve(self) -> None:
            pass

    real = granian.Granian
    granian.Granian = Capture  # type: ignore[assignment]
    try:
        args = cli.parser().parse_args(["serve", "--host", host, "--port", str(port), "--workers", str(workers)])
        code = args.func(args, config.load())
    finally:
        granian.Granian = real
    if code != 0 or not captured:
        raise SystemExit(f"could not capture the settings of `serve` (exit code {code})")
    captured.pop("factory", None)
    return captured


def main() -> None:
    from granian import Granian

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8001)
    p.add_argument("--workers", type=int, default=1)
    args = p.parse_args()
    settings = serve_settings(args.host, args.port, args.workers)
    print(f"no-op app with the settings of serve: {settings}", file=sys.stderr, flush=True)
    Granian("noop:app", **settings).serve()


if __name__ == "__main__":
    main()
