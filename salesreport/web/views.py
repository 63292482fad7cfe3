"""What each page shows, read from the rollups only (nothing scans the sales).

Every open page polls its figures. A page is kept while its data is unchanged
(``cache``), and at least ``SETTLE_SECONDS`` while sales come in: fifty open
pages cost nothing while the chain is quiet, about one read per second per
page kind and worker while it sells, and a sale shows within the page's 5 s.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from sqlalchemy.ext.asyncio import AsyncConnection

from .. import reports
from ..schemas import MonthRevenue, TopProduct, TopStore, format_money, format_month

SETTLE_SECONDS = 1.0


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
        # January of the year 1 has no month before it (``reports.months_until`` stops there): nothing
        # to compare with, as for a month before any sale.
        return self.series[-2].revenue if len(self.series) > 1 else format_money(0)


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
