"""The no-op reference: a bare ASGI app that reads the whole body and answers a fixed 201 JSON.

It reads the body as the service does (``service.receive_body``): up to its Content-Length, without
waiting for the empty message with which Granian ends every body.

No framework at all, so that the gap between this and ``POST /sales`` is everything
the service costs: routing, parsing, validation, the database and the framework.
Served by Granian with exactly the settings of ``python -m salesreport serve``
(ASGI, HTTP/1.1, backlog, HTTP/1 settings, workers...): they are captured by
running the CLI's own serve command with a stand-in for Granian, so that this
reference follows any change there. Give it the service's DATABASE_URL (on
SQLite, ``serve`` runs one worker only, and so does this)::

    DATABASE_URL=postgresql://... python bench/noop.py --host 127.0.0.1 --port 8001 --workers 2
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

CREATED = b'{"id":1,"status":"stored"}'
READY = b'{"status":"ok"}'


def _start(status: int, body: bytes) -> Message:
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    return {"type": "http.response.start", "status": status, "headers": headers}


# Built once: the reference should cost no more per request than the protocol itself.
ANSWERS = {
    "POST": (_start(201, CREATED), {"type": "http.response.body", "body": CREATED}),
    "GET": (_start(200, READY), {"type": "http.response.body", "body": READY}),  # the harness's readiness probe
}


async def lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def app(scope: MutableMapping[str, Any], receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        await lifespan(receive, send)
        return
    if scope["type"] != "http":
        return
    length = next((int(value) for name, value in scope["headers"] if name == b"content-length"), None)
    size = 0
    while True:
        message = await receive()
        size += len(message.get("body", b""))
        if message["type"] != "http.request" or size == length or not message.get("more_body", False):
            break
    if message["type"] == "http.disconnect":
        return
    start, body = ANSWERS["GET" if scope["method"] == "GET" else "POST"]
    await send(start)
    await send(body)


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
