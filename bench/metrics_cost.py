"""The CPU that the metrics add to a request, below the HTTP server.

Drives the real app's ASGI callable (its middleware and ``GET /health/live``) in one process,
with the request metrics recorded and with their call replaced by nothing, in alternating
rounds, and prints the CPU per request of each and the difference; then the cost of the
calls a batch makes. Once with the process's own registry, once in multi-process mode
(samples written to files, as under ``serve``), each in a fresh interpreter:

    python bench/metrics_cost.py
"""

from __future__ import annotations

import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
import timeit
from pathlib import Path
from typing import Any

REQUESTS = 10_000
ROUNDS = 9


async def _drive(app: Any, n: int) -> float:
    """CPU seconds per request for ``n`` GET /health/live through the whole app."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": "/health/live",
        "raw_path": b"/health/live",
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"bench")],
        "client": ("127.0.0.1", 5000),
        "server": ("127.0.0.1", 8000),
    }

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        pass

    started = time.process_time()
    for _ in range(n):
        await app(dict(scope), receive, send)
        await asyncio.sleep(0)  # a turn of the event loop per request: its metrics are written in it
    return (time.process_time() - started) / n


def _measure() -> None:
    from salesreport import config, metrics
    from salesreport.api import create_app

    settings = config.load()
    app = create_app(settings)
    recorded = metrics.record_request

    def nothing(method: str, route: str | None, status: int, seconds: float) -> None:
        pass

    async def run() -> tuple[list[float], list[float]]:
        await _drive(app, 2000)  # warm up: routes, label children, imports
        on: list[float] = []
        off: list[float] = []
        for _ in range(ROUNDS):
            metrics.record_request = recorded
            on.append(await _drive(app, REQUESTS))
            metrics.record_request = nothing
            off.append(await _drive(app, REQUESTS))
        metrics.record_request = recorded
        return on, off

    stdout = sys.stdout
    sys.stdout = open(os.devnull, "w")  # noqa: SIM115  (the access log: the same in both)
    try:
        on, off = asyncio.run(run())
    finally:
        sys.stdout.close()
        sys.stdout = stdout
    mode = "multi-process (files)" if os.environ.get(metrics.MULTIPROC_DIR) else "one process (registry)"
    # Other processes share the cores: compare each round with its neighbour, and take the median.
    pairs = sorted((a - b) * 1e6 for a, b in zip(on, off, strict=True))
    print(f"{mode}: a request takes {statistics.median(on) * 1e6:.1f} µs CPU with metrics, ", end="")
    print(f"{statistics.median(off) * 1e6:.1f} without (medians of {ROUNDS} rounds of {REQUESTS})")
    print(f"  the request metrics cost {statistics.median(pairs):.1f} µs per request (median of the differences)")
    print(f"  differences: {', '.join(f'{d:.1f}' for d in pairs)} µs")

    writer = metrics.WriterMetrics("sales")

    def batch() -> None:
        writer.queue.set(5)
        writer.batch_size.observe(20)
        writer.queue.set(0)
        writer.commit.observe(0.004)
        writer.stored.inc(20)
        writer.replays.inc(0)

    def request() -> None:
        metrics.record_request("GET", "/health/live", 200, 0.001)

    # The least of several repeats: the run that other processes disturbed least.
    for what, call in (("record_request alone", request), ("a batch's metrics (whatever its size)", batch)):
        best = min(timeit.repeat(call, number=50_000, repeat=7)) / 50_000
        print(f"  {what}: {best * 1e6:.2f} µs")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        _measure()
        return
    with tempfile.TemporaryDirectory() as directory, tempfile.TemporaryDirectory() as data:
        root = str(Path(__file__).resolve().parent.parent)
        base = {
            **os.environ,
            "PYTHONPATH": root,
            "DATABASE_URL": f"sqlite:///{data}/bench.db",
            "SALESREPORT_LOG_FORMAT": "json",
        }
        base.pop("PROMETHEUS_MULTIPROC_DIR", None)
        for env in (base, {**base, "PROMETHEUS_MULTIPROC_DIR": directory}):
            subprocess.run([sys.executable, __file__, "--child"], env=env, check=True)


if __name__ == "__main__":
    main()
