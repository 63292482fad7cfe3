"""CPU per request of the app itself, without a server or HTTP: the ASGI app called directly.

Drives ``create_app`` with ``N`` one-sale POSTs (or GETs of a path, with its query string if given)
from ``C`` concurrent callers, after the same number as a warm-up, and prints the process's CPU time
per request and the rate. What a change to the request path costs or saves shows here without the
noise of wrk and Granian on the same cores (the process's CPU includes the writer's asyncpg work,
not PostgreSQL's). Give it a migrated database with a catalog of at least 20 stores and 40 products
(``demo`` makes one)::

    DATABASE_URL=postgresql://... SALESREPORT_LOG_FORMAT=json python bench/inprocess.py 8000 64 > /dev/null

``--request-path``: the writer answers each POST at once, with no database work: the request path
alone (BENCHMARKS.md, "Notes", ninth part).
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import MutableMapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from salesreport import config
from salesreport.api import create_app
from salesreport.ingestion import parse_sales


async def main(n: int, callers: int, target: str, request_path: bool = False) -> str:
    app = create_app(config.load())
    path, _, query = target.partition("?")
    post = path == "/sales"
    async with app.router.lifespan_context(app):
        if request_path:
            await _answer_at_once(app.state.service.batcher)

        async def one(i: int) -> None:
            body = (
                msgspec.json.encode({"product_id": i % 40 + 1, "store_id": i % 20 + 1, "quantity": 1}) if post else b""
            )
            headers = [(b"host", b"127.0.0.1:8000"), (b"content-type", b"application/json")]
            headers.append((b"content-length", str(len(body)).encode()))
            scope = {
                "type": "http",
                "asgi": {"version": "3.0"},
                "http_version": "1.1",
                "method": "POST" if post else "GET",
                "scheme": "http",
                "path": path,
                "raw_path": path.encode(),
                "query_string": query.encode(),
                "root_path": "",
                "headers": headers,
                "client": ("127.0.0.1", 5555),
                "server": ("127.0.0.1", 8000),
                "app": app,
                "state": {},
            }
            sent = False

            async def receive() -> dict[str, Any]:
                nonlocal sent
                if not sent:
                    sent = True
                    return {"type": "http.request", "body": body, "more_body": False}
                await asyncio.Event().wait()  # no disconnect while the request runs
                raise AssertionError

            status: list[int] = []

            async def send(message: MutableMapping[str, Any]) -> None:
                if message["type"] == "http.response.start":
                    status.append(message["status"])

            await app(scope, receive, send)
            assert status and status[0] in (200, 201), status

        async def caller(k: int) -> None:
            for i in range(k, n, callers):
                await one(i)

        await asyncio.gather(*(caller(k) for k in range(callers)))  # warm-up
        cpu, wall = time.process_time(), time.perf_counter()
        await asyncio.gather(*(caller(k) for k in range(callers)))
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    return f"{target}, {callers} callers: {cpu / n * 1e6:.0f} µs CPU per request, {n / wall:,.0f} req/s"


async def _answer_at_once(batcher: Any) -> None:
    """``--request-path``: the writer answers every POST at once with one stored sale's answer, so
    that the figure is the request path alone (no database, no batch, no wake-up of the writer)."""
    body = msgspec.json.encode({"product_id": 1, "store_id": 1, "quantity": 1})
    sales, is_array = await parse_sales(body)
    stored = await batcher.submit(sales, is_array, datetime.now(UTC))

    async def submit(*args: Any, **kwargs: Any) -> Any:
        return stored

    batcher.submit = submit


if __name__ == "__main__":
    flags = [a for a in sys.argv[1:] if a.startswith("--")]
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    line = uvloop.run(  # the loop ``serve`` runs the app on
        main(
            int(args[0]) if args else 8000,
            int(args[1]) if len(args) > 1 else 64,
            args[2] if len(args) > 2 else "/sales",
            request_path="--request-path" in flags,
        )
    )
    print(line, file=sys.stderr)
