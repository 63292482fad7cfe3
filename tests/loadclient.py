"""A load client for the fault tests: POS terminals posting sales with idempotency keys.

Every POST is a ``Post``: one sale or a small array, each sale with its own
idempotency key, sent again unchanged (same keys, same content) until it is
acknowledged. Every attempt is recorded: when it started and ended, the status
or the exception, its ``Retry-After``, and whether the request had been sent
in full when it failed (from httpx's trace events), so that a test can tell
"refused before anything was sent" from "sent, and then left without an answer".
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

ACKNOWLEDGED = frozenset({200, 201})
SENT = "http11.send_request_body.complete"  # the trace event after which a request is on the wire in full
# The fault tests' catalog: written as CSV for `python -m salesreport import`.
PRODUCTS_CSV = "id,name,price\n1,Tea,2.50\n2,Bread,0.99\n3,Coffee,1234.56\n"
STORES_CSV = "id,address,timezone\n1,Moscow,Europe/Moscow\n2,Vladivostok,Asia/Vladivostok\n3,Omsk,Asia/Omsk\n"
PRODUCT_IDS = (1, 2, 3)
STORE_IDS = (1, 2, 3)


@dataclass
class Attempt:
    started: float  # time.monotonic()
    ended: float
    status: int | None = None  # the HTTP status, when an answer came
    retry_after: str | None = None
    error: str | None = None  # the exception's class name, when none came
    detail: str = ""
    sent: bool = False  # the request went out in full before the failure
    new_connection: bool = False
    request_id: str = ""  # sent as X-Request-ID, which the server logs
    events: list[tuple[str, float]] = field(default_factory=list)  # httpx's trace events and when, for failures

    @property
    def acknowledged(self) -> bool:
        return self.status in ACKNOWLEDGED

    @property
    def unanswered(self) -> bool:
        """Sent in full, and then no answer: the failure a draining server must not cause."""
        return self.error is not None and self.sent

    def event_time(self, name: str) -> float | None:
        return next((at for event, at in self.events if event == name), None)

    @property
    def timed_out(self) -> bool:
        return self.error is not None and "Timeout" in self.error

    def __str__(self) -> str:
        what = f"{self.status}" if self.status is not None else f"{self.error}({self.detail})"
        flags = ("sent " if self.sent else "") + ("new-conn " if self.new_connection else "")
        return f"[{self.request_id} {self.started:.3f}+{self.ended - self.started:.3f}s {flags}{what}]"


@dataclass
class Post:
    """One request body and everything that happened to it."""

    sales: list[dict[str, Any]]
    is_array: bool
    attempts: list[Attempt] = field(default_factory=list)
    stored: list[dict[str, Any]] | None = None  # the sales as the first acknowledgement returned them

    @property
    def body(self) -> bytes:
        return json.dumps(self.sales if self.is_array else self.sales[0]).encode()

    @property
    def keys(self) -> list[tuple[int, str]]:
        return [(sale["store_id"], sale["idempotency_key"]) for sale in self.sales]

    @property
    def acknowledged(self) -> bool:
        return any(a.acknowledged for a in self.attempts)


def make_sales(prefix: str) -> Iterator[tuple[list[dict[str, Any]], bool]]:
    """Endless distinct bodies: single sales and arrays of 2 to 4, every sale with a new key."""
    key = itertools.count()
    for n in itertools.count():
        size = 1 if n % 3 else 2 + n % 3
        sales = []
        for _ in range(size):
            i = next(key)
            sales.append(
                {
                    "product_id": PRODUCT_IDS[i % len(PRODUCT_IDS)],
                    "store_id": STORE_IDS[(i // 3) % len(STORE_IDS)],
                    "quantity": 1 + i % 7,
                    "sold_at": f"2025-{1 + i % 12:02d}-{1 + i % 28:02d}T{i % 24:02d}:{i % 60:02d}:00Z",
                    "idempotency_key": f"{prefix}-{i}",
                }
            )
        yield sales, size > 1 or n % 2 == 1  # some single sales go as one-item arrays


class Load:
    """``concurrency`` tasks posting sales back to back until ``stop`` is set.

    A task sends its current post again on a 503 (after its Retry-After), on
    another status of ``retry_on`` or a transport failure (after ``pause``), and
    moves on to a new post once it got any other answer. ``headers`` go with
    every request (an API key).
    """

    def __init__(
        self,
        base_url: str,
        *,
        prefix: str = "pos",
        concurrency: int = 32,
        timeout: float = 10.0,
        pause: float = 0.1,
        headers: dict[str, str] | None = None,
        retry_on: frozenset[int] = frozenset({503}),
    ) -> None:
        self.base_url = base_url
        self.prefix = prefix
        self.concurrency = concurrency
        self.timeout = timeout
        self.pause = pause
        self.headers = headers or {}
        self.retry_on = retry_on
        self.posts: list[Post] = []
        self.stop = asyncio.Event()
        self._bodies = make_sales(prefix)
        self._request_ids = itertools.count()
        self._client: httpx.AsyncClient | None = None

    async def __aenter__(self) -> Load:
        limits = httpx.Limits(max_connections=self.concurrency, max_keepalive_connections=self.concurrency)
        self._client = httpx.AsyncClient(
            base_url=self.base_url, timeout=self.timeout, limits=limits, headers=self.headers
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._client is not None
        await self._client.aclose()

    @property
    def client(self) -> httpx.AsyncClient:
        assert self._client is not None, "use Load as an async context manager"
        return self._client

    async def send(self, post: Post) -> Attempt:
        """POST once and record the attempt; never raises for HTTP or transport failures."""
        events: list[tuple[str, float]] = []

        async def trace(name: str, info: dict[str, Any]) -> None:
            events.append((name, time.monotonic()))

        attempt = Attempt(started=time.monotonic(), ended=0.0, request_id=f"{self.prefix}-{next(self._request_ids)}")
        try:
            response = await self.client.post(
                "/sales",
                content=post.body,
                headers={"content-type": "application/json", "x-request-id": attempt.request_id},
                extensions={"trace": trace},
            )
        except httpx.TransportError as exc:
            attempt.error = type(exc).__name__
            attempt.detail = str(exc)[:200]
        else:
            attempt.status = response.status_code
            attempt.retry_after = response.headers.get("retry-after")
            if not attempt.acknowledged:
                attempt.detail = response.text[:200]
            if attempt.acknowledged and post.stored is None:
                answer = response.json()
                post.stored = answer if post.is_array else [answer]
        attempt.ended = time.monotonic()
        names = {name for name, _ in events}
        attempt.sent = SENT in names
        attempt.new_connection = "connection.connect_tcp.complete" in names
        if attempt.error is not None:
            attempt.events = events
        post.attempts.append(attempt)
        return attempt

    async def _worker(self) -> None:
        # Like a POS terminal: the same sale again until it is acknowledged, then the next one.
        while not self.stop.is_set():
            sales, is_array = next(self._bodies)
            post = Post(sales, is_array)
            self.posts.append(post)
            while not self.stop.is_set():
                attempt = await self.send(post)
                if attempt.status is not None and attempt.status not in self.retry_on:
                    break  # acknowledged, or refused for good (which the tests assert never happens)
                await asyncio.sleep(self.wait_after(attempt))

    def wait_after(self, attempt: Attempt) -> float:
        """A 503 says how long to wait (Retry-After), as the README asks of POS clients."""
        if attempt.status == 503 and attempt.retry_after and attempt.retry_after.isdigit():
            return max(self.pause, min(float(attempt.retry_after), 2.0))
        return self.pause

    async def run(self) -> None:
        """Post until ``stop`` is set; returns once every task has had its last answer."""
        async with asyncio.TaskGroup() as group:
            for _ in range(self.concurrency):
                group.create_task(self._worker())

    def unacknowledged(self) -> list[Post]:
        return [post for post in self.posts if not post.acknowledged]

    async def retry_unacknowledged(self, deadline: float, pause: float = 0.2) -> list[Post]:
        """Send every unacknowledged post again, same keys and content, until acknowledged or ``deadline``.

        Returns the posts still unacknowledged at the deadline.
        """
        semaphore = asyncio.Semaphore(self.concurrency)

        async def retry(post: Post) -> None:
            while not post.acknowledged and time.monotonic() < deadline:
                async with semaphore:
                    attempt = await self.send(post)
                if not attempt.acknowledged:
                    await asyncio.sleep(pause)

        async with asyncio.TaskGroup() as group:
            for post in self.unacknowledged():
                group.create_task(retry(post))
        return self.unacknowledged()

    # --- what happened --------------------------------------------------------------

    def attempts(self) -> list[Attempt]:
        return [attempt for post in self.posts for attempt in post.attempts]

    def keys(self) -> set[tuple[int, str]]:
        return {key for post in self.posts for key in post.keys}

    def acknowledged_keys(self) -> set[tuple[int, str]]:
        return {key for post in self.posts if post.acknowledged for key in post.keys}

    @staticmethod
    def show(attempts: Sequence[Attempt]) -> str:
        return ", ".join(map(str, attempts))

    def summary(self, attempts: Sequence[Attempt] | None = None) -> dict[str, int]:
        """How many attempts ended how: ``{"201": 812, "503": 40, "ConnectError": 90, ...}``."""
        counts: dict[str, int] = {}
        for attempt in self.attempts() if attempts is None else attempts:
            what = str(attempt.status) if attempt.status is not None else attempt.error
            if attempt.error is not None and attempt.sent:
                what = f"{what} after sending"
            assert what is not None
            counts[what] = counts.get(what, 0) + 1
        return dict(sorted(counts.items()))
