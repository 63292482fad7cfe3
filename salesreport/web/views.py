"""What each page shows, read from the rollups only (nothing scans the sales), cached for a second.

Every open page polls its figures; a second's cache makes fifty open pages cost
about one read per second per worker, and keeps a sale within the page's 5 s.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from .. import reports
from ..schemas import MonthRevenue, TopProduct, TopStore, format_month

CACHE_SECONDS = 1.0


@dataclass(frozen=True)
class Bar:
    label: str
    value: str  # an exact decimal string, or a count
    share: float  # of the largest bar, 0..1, for drawing only


def bars(labels: list[str], values: list[str]) -> list[Bar]:
    numbers = [abs(Decimal(v)) for v in values]
    top = max(numbers, default=Decimal(0)) or Decimal(1)
    return [Bar(label, value, float(n / top)) for label, value, n in zip(labels, values, numbers, strict=True)]


@dataclass(frozen=True)
class MonthView:
    month: str
    stores: list[TopStore]
    previous_ranks: dict[int, int]
    products: list[TopProduct]
    series: list[MonthRevenue]

    @property
    def revenue(self) -> str:
        return self.series[-1].revenue

    @property
    def previous_revenue(self) -> str:
        return self.series[-2].revenue


@dataclass(frozen=True)
class StoreView:
    month: str
    products: list[TopProduct]
    series: list[MonthRevenue]


def previous_month(month: int) -> int:
    return reports.months_until(month, 2)[0]


async def month_view(conn: AsyncConnection, month: int) -> MonthView:
    stores = await reports.top_stores(conn, month)
    ranks = await reports.store_ranks(conn, previous_month(month))
    products = await reports.top_products(conn, month)
    series = await reports.revenue_by_month(conn, month, 12)
    return MonthView(format_month(month), stores, ranks, products, series)


async def store_view(conn: AsyncConnection, store_id: int, month: int) -> StoreView:
    products = await reports.top_products(conn, month, reports.LIMIT, store_id)
    series = await reports.revenue_by_month(conn, month, 12, store_id)
    return StoreView(format_month(month), products, series)


class Cache:
    """Rendered pages by what they show, each kept ``CACHE_SECONDS``; while one is being built, every
    request for it waits for that one build (fifty pages polling at the moment it expires cost one)."""

    def __init__(self) -> None:
        self._pages: dict[Any, tuple[float, Any]] = {}
        self._building: dict[Any, asyncio.Task[Any]] = {}

    async def get(self, key: Any, build: Callable[[], Awaitable[Any]]) -> Any:
        found = self._pages.get(key)
        if found is not None and time.monotonic() - found[0] <= CACHE_SECONDS:
            return found[1]
        task = self._building.get(key)
        if task is None:
            # A task of its own: a caller that goes away does not cancel the build the others wait for.
            task = asyncio.ensure_future(self._build(key, build))
            self._building[key] = task
            task.add_done_callback(lambda done: None if done.cancelled() else done.exception())
        return await asyncio.shield(task)

    async def _build(self, key: Any, build: Callable[[], Awaitable[Any]]) -> Any:
        try:
            page = await build()
        finally:
            del self._building[key]
        if len(self._pages) > 1000:
            self._pages.clear()
        self._pages[key] = (time.monotonic(), page)
        return page
