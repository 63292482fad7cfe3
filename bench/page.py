"""The dashboard in headless Chromium: how long until the page is drawn, and how much it loads.

Debian's Chromium, driven by Playwright (as the browser tests do). Each of ``runs`` loads is a new
browser context (nothing cached); "drawn" is the load event (HTML parsed, stylesheet and script run:
the tables and SVG charts are in the HTML, so they are drawn by then); the size is what crossed the
network (HTML, CSS, script), from the Resource Timing API.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import threading
import time
from dataclasses import dataclass
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"


@dataclass
class PageResult:
    path: str
    drawn_ms: list[float]
    bytes_loaded: int

    @property
    def median_ms(self) -> float:
        return statistics.median(self.drawn_ms)

    @property
    def worst_ms(self) -> float:
        return max(self.drawn_ms)


_TIMING = """() => {
  const nav = performance.getEntriesByType('navigation')[0];
  const resources = performance.getEntriesByType('resource');
  const bytes = nav.transferSize + resources.reduce((sum, r) => sum + r.transferSize, 0);
  return [nav.loadEventEnd - nav.startTime, bytes];
}"""


def measure(url: str, path: str, runs: int = 10) -> PageResult | None:
    """None when Chromium or Playwright is not installed (the page stage is then left out)."""
    if not Path(CHROMIUM).exists():
        return None
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        return None
    drawn: list[float] = []
    loaded = 0
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            for _ in range(runs):
                context = browser.new_context(viewport={"width": 1200, "height": 900})
                page = context.new_page()
                page.goto(url + path, wait_until="load")
                ms, size = page.evaluate(_TIMING)
                drawn.append(float(ms))
                loaded = int(size)
                context.close()
        finally:
            browser.close()
    return PageResult(path, drawn, loaded)


class OpenPages:
    """``pages`` dashboards left open, from a thread of their own until the block ends: each holds a live
    poll of its fragment as the page's script does (``wait=1`` with its ETag: the server answers when the
    page changed, or after about 20 s), and after an answer that came back at once waits ``pause``.
    Entering the block returns once every page has sent a poll with its ETag (the steady state: what
    open pages cost after they were loaded)."""

    def __init__(self, url: str, path: str, pages: int = 50, pause: float = 3.0) -> None:
        self.url, self.path, self.pages, self.pause = url, path, pages, pause
        self.requests = 0
        self.failures = 0
        self._following: set[int] = set()  # pages that have sent one
        self._settled = threading.Event()
        self._started = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._main: asyncio.Task[None] | None = None
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    def __enter__(self) -> OpenPages:
        self._thread.start()
        self._started.wait(10)
        if not self._settled.wait(60):
            raise RuntimeError(f"only {len(self._following)} of {self.pages} open pages poll by ETag after 60 s")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None and self._main is not None:
            self._loop.call_soon_threadsafe(self._main.cancel)  # the held polls end with it
        self._thread.join(timeout=60)

    async def _run(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._main = asyncio.current_task()
        self._started.set()
        with contextlib.suppress(asyncio.CancelledError):
            await self._poll()

    async def _poll(self) -> None:
        import httpx

        async with httpx.AsyncClient(base_url=self.url, timeout=60) as http:

            async def one(number: int, offset: float) -> None:
                await asyncio.sleep(offset)
                tag = ""
                while True:
                    started = time.monotonic()
                    try:
                        held = {"if-none-match": tag} if tag else {}
                        if tag:
                            self._following.add(number)
                            if len(self._following) == self.pages:
                                self._settled.set()
                        response = await http.get(self.path + "&wait=1", headers=held)
                        self.requests += 1
                        self.failures += response.status_code not in (200, 304)
                        tag = response.headers.get("etag", tag)
                    except httpx.HTTPError:
                        self.failures += 1
                        await asyncio.sleep(self.pause)
                        continue
                    if time.monotonic() - started < 1:
                        await asyncio.sleep(self.pause)

            await asyncio.gather(*(one(i, self.pause * i / self.pages) for i in range(self.pages)))
