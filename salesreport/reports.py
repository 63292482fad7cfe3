"""The owners' reports, read from the rollups, and the check that keeps them honest."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from . import db
from .schemas import TopProduct, TopStore, format_money

LIMIT = 10


def _top(totals: sa.Subquery, table: sa.Table, label: str, columns: list[sa.Column[Any]]) -> sa.Select[Any]:
    return (
        sa.select(*columns, totals.c[label])
        .join(totals, totals.c.key == table.c.id)
        .order_by(totals.c[label].desc(), table.c.id)
        .limit(LIMIT)
    )


def _sum(column: sa.Column[Any], label: str) -> sa.Label[Any]:
    # sum(bigint) is numeric on PostgreSQL; any total here fits a bigint.
    return sa.cast(sa.func.sum(column), sa.BigInteger).label(label)


_sm, _pm, _pt = db.store_month, db.product_month, db.product_total
# Built once: the reports run often, and building a select costs more than running it.
_TOP_STORES = _top(
    sa.select(_sm.c.store_id.label("key"), _sum(_sm.c.revenue, "revenue"))
    .where(_sm.c.month == sa.bindparam("month"))
    .group_by(_sm.c.store_id)
    .subquery(),
    db.stores,
    "revenue",
    [db.stores.c.id, db.stores.c.address],
)
_TOP_PRODUCTS_OF_MONTH = _top(
    sa.select(_pm.c.product_id.label("key"), _sum(_pm.c.quantity, "quantity"))
    .where(_pm.c.month == sa.bindparam("month"))
    .group_by(_pm.c.product_id)
    .subquery(),
    db.products,
    "quantity",
    [db.products.c.id, db.products.c.name],
)
_TOP_PRODUCTS = _top(
    sa.select(_pt.c.product_id.label("key"), _sum(_pt.c.quantity, "quantity")).group_by(_pt.c.product_id).subquery(),
    db.products,
    "quantity",
    [db.products.c.id, db.products.c.name],
)


async def top_stores(conn: AsyncConnection, month: int) -> list[TopStore]:
    result = await conn.execute(_TOP_STORES, {"month": month})
    return [TopStore(id=r.id, address=r.address, revenue=format_money(r.revenue)) for r in result]


async def top_products(conn: AsyncConnection, month: int | None) -> list[TopProduct]:
    if month is None:
        result = await conn.execute(_TOP_PRODUCTS)
    else:
        result = await conn.execute(_TOP_PRODUCTS_OF_MONTH, {"month": month})
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
    """Replace every rollup with sums of the raw sales.

    A sum goes into slot 0, or, past the bound of one slot's value
    (``db.ROLLUP_LIMIT``), over as many slots as it needs.
    """
    s = db.sales
    for table in (db.store_month, db.product_month, db.product_total):
        await conn.execute(sa.delete(table))
    by_store = await conn.execute(
        sa.select(s.c.store_id, s.c.month, sa.func.sum(s.c.amount), sa.func.count()).group_by(s.c.store_id, s.c.month)
    )
    await _insert_spread(conn, db.store_month, ("store_id", "month"), ("revenue", "sales"), by_store)
    by_product = await conn.execute(
        sa.select(s.c.product_id, s.c.month, sa.func.sum(s.c.quantity)).group_by(s.c.product_id, s.c.month)
    )
    await _insert_spread(conn, db.product_month, ("product_id", "month"), ("quantity",), by_product)
    totals = await conn.execute(sa.select(s.c.product_id, sa.func.sum(s.c.quantity)).group_by(s.c.product_id))
    await _insert_spread(conn, db.product_total, ("product_id",), ("quantity",), totals)


async def _insert_spread(
    conn: AsyncConnection, table: sa.Table, keys: tuple[str, ...], values: tuple[str, ...], rows: Any
) -> None:
    records = []
    for row in rows:
        key = dict(zip(keys, row[: len(keys)], strict=True))
        parts = [_spread(int(v)) for v in row[len(keys) :]]
        for slot in range(max(len(p) for p in parts)):
            record = {**key, "slot": slot}
            for name, part in zip(values, parts, strict=True):
                record[name] = part[slot] if slot < len(part) else 0
            records.append(record)
    if records:
        await conn.execute(sa.insert(table), records)


def _spread(value: int) -> list[int]:
    """``value`` as parts of at most ``db.ROLLUP_LIMIT`` each (one part, usually)."""
    parts = []
    while abs(value) > db.ROLLUP_LIMIT:
        step = db.ROLLUP_LIMIT if value > 0 else -db.ROLLUP_LIMIT
        parts.append(step)
        value -= step
    parts.append(value)
    if len(parts) > db.SLOTS:
        raise ValueError(f"a sum of {sum(parts)} is beyond what the rollups can hold")
    return parts
