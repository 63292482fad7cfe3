"""The owners' reports, read from the rollups, and the check that keeps them honest."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from . import db
from .schemas import TopProduct, TopStore, format_money

LIMIT = 10


async def top_stores(conn: AsyncConnection, month: int) -> list[TopStore]:
    sm = db.store_month
    # sum(bigint) is numeric on PostgreSQL; the total of a month fits a bigint.
    revenue = sa.cast(sa.func.sum(sm.c.revenue), sa.BigInteger).label("revenue")
    totals = sa.select(sm.c.store_id, revenue).where(sm.c.month == month).group_by(sm.c.store_id).subquery()
    query = (
        sa.select(db.stores.c.id, db.stores.c.address, totals.c.revenue)
        .join(totals, totals.c.store_id == db.stores.c.id)
        .order_by(totals.c.revenue.desc(), db.stores.c.id)
        .limit(LIMIT)
    )
    result = await conn.execute(query)
    return [TopStore(id=r.id, address=r.address, revenue=format_money(r.revenue)) for r in result]


async def top_products(conn: AsyncConnection, month: int | None) -> list[TopProduct]:
    if month is None:
        table: sa.Table = db.product_total
        where: Any = sa.true()
    else:
        table = db.product_month
        where = table.c.month == month
    quantity = sa.cast(sa.func.sum(table.c.quantity), sa.BigInteger).label("quantity")
    totals = sa.select(table.c.product_id, quantity).where(where).group_by(table.c.product_id).subquery()
    query = (
        sa.select(db.products.c.id, db.products.c.name, totals.c.quantity)
        .join(totals, totals.c.product_id == db.products.c.id)
        .order_by(totals.c.quantity.desc(), db.products.c.id)
        .limit(LIMIT)
    )
    result = await conn.execute(query)
    return [TopProduct(id=r.id, name=r.name, quantity=r.quantity) for r in result]


# --- check and repair --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Difference:
    table: str
    key: tuple[int, ...]
    rollup: tuple[int, ...]
    recomputed: tuple[int, ...]

    def __str__(self) -> str:
        return f"{self.table} {self.key}: rollups say {self.rollup}, raw sales say {self.recomputed}"


async def _pairs(conn: AsyncConnection, query: sa.Select[Any], width: int) -> dict[tuple[int, ...], tuple[int, ...]]:
    result = await conn.execute(query)
    return {tuple(int(v) for v in row[:width]): tuple(int(v) for v in row[width:]) for row in result}


async def differences(conn: AsyncConnection) -> list[Difference]:
    """Recompute every rollup from the raw sales and list what disagrees."""
    s, sm, pm, pt = db.sales, db.store_month, db.product_month, db.product_total
    found: list[Difference] = []
    checks = [
        (
            "store_month",
            sa.select(sm.c.store_id, sm.c.month, sa.func.sum(sm.c.revenue), sa.func.sum(sm.c.sales)).group_by(
                sm.c.store_id, sm.c.month
            ),
            sa.select(s.c.store_id, s.c.month, sa.func.sum(s.c.amount), sa.func.count()).group_by(
                s.c.store_id, s.c.month
            ),
            2,
        ),
        (
            "product_month",
            sa.select(pm.c.product_id, pm.c.month, sa.func.sum(pm.c.quantity)).group_by(pm.c.product_id, pm.c.month),
            sa.select(s.c.product_id, s.c.month, sa.func.sum(s.c.quantity)).group_by(s.c.product_id, s.c.month),
            2,
        ),
        (
            "product_total",
            sa.select(pt.c.product_id, sa.func.sum(pt.c.quantity)).group_by(pt.c.product_id),
            sa.select(s.c.product_id, sa.func.sum(s.c.quantity)).group_by(s.c.product_id),
            1,
        ),
    ]
    for name, rollup_query, raw_query, width in checks:
        rollup = await _pairs(conn, rollup_query, width)
        raw = await _pairs(conn, raw_query, width)
        zero = (0,) * (len(next(iter(raw.values()))) if raw else 1)
        for key in sorted(rollup.keys() | raw.keys()):
            have, want = rollup.get(key, zero), raw.get(key, zero)
            if have != want:
                found.append(Difference(name, key, have, want))
    return found


async def rebuild(conn: AsyncConnection) -> None:
    """Replace every rollup with sums of the raw sales (slot 0)."""
    s = db.sales
    for table in (db.store_month, db.product_month, db.product_total):
        await conn.execute(sa.delete(table))
    await conn.execute(
        sa.insert(db.store_month).from_select(
            ["store_id", "month", "slot", "revenue", "sales"],
            sa.select(s.c.store_id, s.c.month, sa.literal(0), sa.func.sum(s.c.amount), sa.func.count()).group_by(
                s.c.store_id, s.c.month
            ),
        )
    )
    await conn.execute(
        sa.insert(db.product_month).from_select(
            ["product_id", "month", "slot", "quantity"],
            sa.select(s.c.product_id, s.c.month, sa.literal(0), sa.func.sum(s.c.quantity)).group_by(
                s.c.product_id, s.c.month
            ),
        )
    )
    await conn.execute(
        sa.insert(db.product_total).from_select(
            ["product_id", "slot", "quantity"],
            sa.select(s.c.product_id, sa.literal(0), sa.func.sum(s.c.quantity)).group_by(s.c.product_id),
        )
    )
