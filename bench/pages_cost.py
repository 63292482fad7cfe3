"""What 50 open dashboards cost the reports, from one connection: alternating pairs, without and with.

The dashboard's criterion is that 50 open pages cost the reports' p99 (one
connection) no more than 10%. This runs ``make bench``'s own pieces: a durable
PostgreSQL, a history loaded through the bulk path, ``serve --workers 2``; then
``--pairs`` pairs, each a ``wrk -c1`` run of each report without and with 50
pages polling their live fragment (``page.OpenPages``, every 3 s by ETag), the
order alternating between pairs. ``--selling`` adds a till posting one sale
every 50 ms throughout (both sides of each pair), so that the data changes
twenty times a second: the reports are then read again after each change, and
the pages once per settle second.

    .venv/bin/python bench/pages_cost.py --size 200k --pairs 4 --duration 10 [--selling]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import threading
from datetime import UTC, datetime
from pathlib import Path

import page
import report
import run
from services import log


class Till:
    """One till posting a sale every ``every`` seconds from a thread of its own, until the block ends."""

    def __init__(self, url: str, every: float = 0.05) -> None:
        self.url, self.every = url, every
        self.posted = self.failures = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    def __enter__(self) -> Till:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    async def _run(self) -> None:
        import httpx

        async with httpx.AsyncClient(base_url=self.url, timeout=10) as http:
            n = 0
            while not self._stop.is_set():
                n += 1
                sale = {"product_id": n % run.PRODUCTS + 1, "store_id": n % run.STORES + 1, "quantity": 1}
                response = await http.post("/sales", json=sale)
                self.posted += response.status_code == 201
                self.failures += response.status_code != 201
                await asyncio.sleep(self.every)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", default="200k", help="sales loaded before measuring (default 200k)")
    p.add_argument("--pairs", type=int, default=4)
    p.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    p.add_argument("--selling", action="store_true", help="a till posts a sale every 50 ms throughout")
    a = p.parse_args()
    args = run.options(["--duration", str(a.duration), "--warmup", "2", "--backend", "postgresql"])
    month = datetime.now(UTC).strftime("%Y-%m")
    reports = {
        "top-stores": f"/reports/top-stores?month={month}",
        "top-products": "/reports/top-products",
    }
    fragment = f"/?month={month}&fragment=1"
    with tempfile.TemporaryDirectory(prefix="salesreport-pages-") as tmp:
        bench = run.Bench(args, Path(tmp))
        try:
            bench.setup()
            bench.load_history(run.parse_size(a.size), seed=3)
            bench.start_service()
            assert bench.server is not None
            server = bench.server
            bench.wrk(server, "pages-warmup", path="/products", duration=2)
            p99: dict[tuple[str, bool], list[float]] = {}
            for pair in range(a.pairs):
                order = [False, True] if pair % 2 == 0 else [True, False]
                for key, path in reports.items():
                    for with_pages in order:
                        till = Till(server.url) if a.selling else None
                        pages = page.OpenPages(server.url, fragment) if with_pages else None
                        if till is not None:
                            till.__enter__()
                        if pages is not None:
                            pages.__enter__()
                        try:
                            one = bench.wrk(
                                server, f"pages-{pair}-{key}-{int(with_pages)}", path=path, connections=1, threads=1
                            )
                        finally:
                            if pages is not None:
                                pages.__exit__()
                            if till is not None:
                                till.__exit__()
                        p99.setdefault((key, with_pages), []).append(one.p99_ms)
                        polls = f", {pages.requests} polls ({pages.failures} failed)" if pages else ""
                        sold = f", {till.posted} sales posted ({till.failures} failed)" if till else ""
                        log(f"pair {pair} {key} pages={with_pages}: {run.summary(one)}{polls}{sold}")
            print()
            print("| report | " + " | ".join(f"pair {i}" for i in range(a.pairs)) + " | sum with ÷ sum without |")
            print("|---|" + "---:|" * (a.pairs + 1))
            for key in reports:
                without, with_ = p99[(key, False)], p99[(key, True)]
                cells = [f"{report.ms(x)} → {report.ms(y)}" for x, y in zip(without, with_, strict=True)]
                print(f"| {key} | " + " | ".join(cells) + f" | {sum(with_) / sum(without):.2f} |")
        finally:
            bench.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
