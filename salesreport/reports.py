"""The owners' reports, read from the rollups, and the check that keeps them honest."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgspec
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from . import db
from .ingestion import return_out, sale_out
from .schemas import MonthRevenue, SaleDetail, TopProduct, TopStore, format_money, format_month

LIMIT = 10
MAX_LIMIT = 100


def _sum(column: sa.ColumnElement[Any], label: str) -> sa.Label[Any]:
    # sum(bigint) is numeric on PostgreSQL; every total asked for fits a bigint (see _REVENUE_BY_MONTH).
    return sa.cast(sa.func.sum(column), sa.BigInteger).label(label)


def _top(
    rollup: sa.Table,
    key: str,
    rank: str,
    others: tuple[str, ...],
    entity: sa.Table,
    entity_columns: tuple[str, ...],
    *filters: sa.ColumnElement[bool],
) -> sa.Select[Any]:
    """The ``limit`` entities with the largest sum of ``rank``, ties by id, with their sums of ``others``.

    Ranking sums one column over all keys; the other sums are then taken for the chosen keys only,
    so a wider answer costs the reports nothing on the many keys that are not shown.
    """
    key_column = rollup.c[key]
    value = _sum(rollup.c[rank], rank)
    ranked = (
        sa.select(key_column.label("key"), value)
        .where(*filters)
        .group_by(key_column)
        .order_by(value.desc(), key_column)
        .limit(sa.bindparam("limit"))
        .cte("ranked")
    )
    # One index lookup per chosen key (a join would scan the rollup again).
    rest = [
        sa.select(_sum(rollup.c[name], name)).where(key_column == ranked.c.key, *filters).scalar_subquery().label(name)
        for name in others
    ]
    return (
        sa.select(*(entity.c[name] for name in entity_columns), ranked.c[rank], *rest)
        .select_from(ranked)
        .join(entity, entity.c.id == ranked.c.key)
        .order_by(ranked.c[rank].desc(), entity.c.id)
    )


_sm, _pm, _pt, _spm = db.store_month, db.product_month, db.product_total, db.store_product_month
_month: sa.BindParameter[int] = sa.bindparam("month")
_PRODUCT = ("returned", "revenue")
# Built once: the reports run often, and building a select costs more than running it.
_TOP_STORES = _top(
    _sm, "store_id", "revenue", ("refunds", "discounts"), db.stores, ("id", "address"), _sm.c.month == _month
)
_TOP_PRODUCTS_OF_MONTH = _top(
    _pm, "product_id", "quantity", _PRODUCT, db.products, ("id", "name"), _pm.c.month == _month
)
_TOP_PRODUCTS = _top(_pt, "product_id", "quantity", _PRODUCT, db.products, ("id", "name"))
_TOP_PRODUCTS_OF_STORE = _top(
    _spm,
    "product_id",
    "quantity",
    _PRODUCT,
    db.products,
    ("id", "name"),
    _spm.c.store_id == sa.bindparam("store_id"),
    _spm.c.month == _month,
)


async def top_stores(conn: AsyncConnection, month: int, limit: int = LIMIT) -> list[TopStore]:
    """The stores with the highest net revenue in ``month`` (store-local), any with a sale or a return in it."""
    result = await conn.execute(_TOP_STORES, {"month": month, "limit": limit})
    return [
        TopStore(
            id=r.id,
            address=r.address,
            revenue=format_money(r.revenue),
            gross=format_money(r.revenue + r.refunds),
            refunds=format_money(r.refunds),
            discounts=format_money(r.discounts),
        )
        for r in result
    ]


# A store's sums fit a BIGINT (its slots are bounded, see ``db.ROLLUP_LIMIT``); the chain's need not.
# So each figure is summed in two parts that do, its quotient by 2^32 and its remainder (both
# databases' integer division truncates, and a remainder takes the dividend's sign), and put back
# together here: exact, and still one row per month.
_SPLIT = 2**32
_FIGURES = ("revenue", "refunds", "discounts", "sales")
_REVENUE_BY_MONTH = (
    sa.select(
        _sm.c.month,
        *(_sum(_sm.c[name].op("/")(_SPLIT), f"{name}_high") for name in _FIGURES),
        *(_sum(_sm.c[name].op("%")(_SPLIT), f"{name}_low") for name in _FIGURES),
    )
    .where(_sm.c.month.between(sa.bindparam("first"), sa.bindparam("last")))
    .group_by(_sm.c.month)
)
_STORE_REVENUE_BY_MONTH = _REVENUE_BY_MONTH.where(_sm.c.store_id == sa.bindparam("store_id"))


async def top_products(
    conn: AsyncConnection, month: int | None, limit: int = LIMIT, store_id: int | None = None
) -> list[TopProduct]:
    """The products with the most units sold less returned, in ``month`` or over all time; or at one
    store in ``month`` (returns counted at the store that took them back)."""
    if store_id is not None:
        assert month is not None
        result = await conn.execute(_TOP_PRODUCTS_OF_STORE, {"month": month, "store_id": store_id, "limit": limit})
    elif month is None:
        result = await conn.execute(_TOP_PRODUCTS, {"limit": limit})
    else:
        result = await conn.execute(_TOP_PRODUCTS_OF_MONTH, {"month": month, "limit": limit})
    return [
        TopProduct(
            id=r.id,
            name=r.name,
            quantity=r.quantity,
            sold=r.quantity + r.returned,
            returned=r.returned,
            revenue=format_money(r.revenue),
        )
        for r in result
    ]


_STORE_REVENUES = (
    sa.select(_sm.c.store_id, _sum(_sm.c.revenue, "revenue")).where(_sm.c.month == _month).group_by(_sm.c.store_id)
)


async def store_ranks(conn: AsyncConnection, month: int) -> dict[int, int]:
    """Every store's rank by net revenue in ``month`` (as top-stores ranks them: ties by id), of those
    with a sale or a return in it."""
    rows = (await conn.execute(_STORE_REVENUES, {"month": month})).all()
    ordered = sorted(rows, key=lambda r: (-r.revenue, r.store_id))
    return {r.store_id: rank for rank, r in enumerate(ordered, start=1)}


def months_until(last: int, count: int) -> list[int]:
    """The ``count`` months (``YYYYMM``) that end with ``last``, oldest first."""
    year, month = divmod(last, 100)
    index = year * 12 + month - 1
    first = max(index - count + 1, 12)  # not before January of the year 1
    return [(i // 12) * 100 + i % 12 + 1 for i in range(first, index + 1)]


async def revenue_by_month(
    conn: AsyncConnection, last: int, count: int = 12, store_id: int | None = None
) -> list[MonthRevenue]:
    """The chain's (or one store's) figures for each of the ``count`` months up to ``last``, zero where
    nothing happened."""
    months = months_until(last, count)
    if not months:  # before the year 1
        return []
    params = {"first": months[0], "last": last}
    if store_id is None:
        result = await conn.execute(_REVENUE_BY_MONTH, params)
    else:
        result = await conn.execute(_STORE_REVENUE_BY_MONTH, {**params, "store_id": store_id})
    found = {
        r.month: tuple(r[f"{name}_high"] * _SPLIT + r[f"{name}_low"] for name in _FIGURES) for r in result.mappings()
    }
    rows = []
    for month in months:
        revenue, refunds, discounts, sales = found.get(month, (0, 0, 0, 0))
        rows.append(
            MonthRevenue(
                month=format_month(month),
                revenue=format_money(revenue),
                gross=format_money(revenue + refunds),
                refunds=format_money(refunds),
                discounts=format_money(discounts),
                sales=sales,
            )
        )
    return rows


_SALE = sa.select(db.sales).where(db.sales.c.id == sa.bindparam("id"))
_RETURNS_OF = sa.select(db.returns).where(db.returns.c.sale_id == sa.bindparam("id")).order_by(db.returns.c.id)


async def sale(conn: AsyncConnection, sale_id: int) -> SaleDetail | None:
    """One sale with its returns, oldest first."""
    row = (await conn.execute(_SALE, {"id": sale_id})).mappings().first()
    if row is None:
        return None
    returns = (await conn.execute(_RETURNS_OF, {"id": sale_id})).mappings().all()
    out = sale_out(dict(row))
    return SaleDetail(**msgspec.structs.asdict(out), returns=[return_out(dict(r)) for r in returns])


# --- check and repair --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Difference:
    table: str
    key: tuple[int, ...]
    rollup: tuple[int, ...]
    recomputed: tuple[int, ...]

    def __str__(self) -> str:
        return f"{self.table} {self.key}: stored {self.rollup}, raw sales and returns say {self.recomputed}"


async def recompute(conn: AsyncConnection) -> db.Rollups:
    """Every rollup as the raw sales and returns say it should be (``db.Rollups``, the one rule), and
    what the archived ones added (``archive``)."""
    rollups = await raw_sums(conn)
    for name, table in db.ARCHIVED.items():
        width = len(db.ROLLUP_KEYS[name])
        for row in await conn.execute(sa.select(table)):
            rollups.add(name, tuple(row[:width]), *row[width:])
    return rollups


async def raw_sums(
    conn: AsyncConnection,
    sales_where: sa.ColumnElement[bool] | None = None,
    returns_where: sa.ColumnElement[bool] | None = None,
) -> db.Rollups:
    """What the raw sales (and returns) stored, or those chosen, add to the rollups."""
    s, r = db.sales, db.returns
    rollups = db.Rollups()
    sale_sums = sa.select(
        s.c.store_id,
        s.c.product_id,
        s.c.month,
        sa.func.sum(s.c.quantity),
        sa.func.sum(s.c.amount),
        sa.func.sum((s.c.catalog_price - s.c.unit_price) * s.c.quantity),
        sa.func.count(),
    ).group_by(s.c.store_id, s.c.product_id, s.c.month)
    if sales_where is not None:
        sale_sums = sale_sums.where(sales_where)
    for store_id, product_id, month, quantity, amount, discount, count in await conn.execute(sale_sums):
        rollups.add_sale(store_id, product_id, month, int(quantity), int(amount), int(discount), int(count))
    return_sums = sa.select(
        r.c.store_id, r.c.product_id, r.c.month, sa.func.sum(r.c.quantity), sa.func.sum(r.c.amount)
    ).group_by(r.c.store_id, r.c.product_id, r.c.month)
    if returns_where is not None:
        return_sums = return_sums.where(returns_where)
    for store_id, product_id, month, quantity, refund in await conn.execute(return_sums):
        rollups.add_return(store_id, product_id, month, int(quantity), int(refund))
    return rollups


async def _stored(conn: AsyncConnection, name: str) -> dict[tuple[int, ...], tuple[int, ...]]:
    """A rollup table as its slots sum up."""
    table = db.metadata.tables[name]
    keys = [table.c[k] for k in db.ROLLUP_KEYS[name]]
    result = await conn.execute(
        sa.select(*keys, *(sa.func.sum(table.c[c]) for c in db.ROLLUP_COLUMNS[name])).group_by(*keys)
    )
    width = len(keys)
    return {tuple(int(v) for v in row[:width]): tuple(int(v) for v in row[width:]) for row in result}


# Sales whose count of returned units is not the sum of their returns.
_returned = (
    sa.select(db.returns.c.sale_id, sa.func.sum(db.returns.c.quantity).label("quantity"))
    .group_by(db.returns.c.sale_id)
    .subquery()
)
_WRONG_RETURNED = (
    sa.select(db.sales.c.id, db.sales.c.returned, sa.func.coalesce(_returned.c.quantity, 0))
    .outerjoin(_returned, _returned.c.sale_id == db.sales.c.id)
    .where(db.sales.c.returned != sa.func.coalesce(_returned.c.quantity, 0))
    .order_by(db.sales.c.id)
)


async def differences(conn: AsyncConnection) -> list[Difference]:
    """Recompute every rollup, and each sale's returned units, from the raw sales and returns; list what disagrees."""
    found: list[Difference] = []
    expected = await recompute(conn)
    for name in db.ROLLUP_COLUMNS:
        stored = await _stored(conn, name)
        want = {key: tuple(sums) for key, sums in expected.tables[name].items()}
        zero = (0,) * len(db.ROLLUP_COLUMNS[name])
        for key in sorted(stored.keys() | want.keys()):
            have, should = stored.get(key, zero), want.get(key, zero)
            if have != should:
                found.append(Difference(name, key, have, should))
    for sale_id, returned, should in await conn.execute(_WRONG_RETURNED):
        found.append(Difference("sales.returned", (int(sale_id),), (int(returned),), (int(should),)))
    return found


async def rebuild(conn: AsyncConnection) -> None:
    """Replace every rollup with sums of the raw sales and returns, and set each sale's returned units.

    A sum goes into slot 0, or, past the bound of one slot's value
    (``db.ROLLUP_LIMIT``), over as many slots as it needs.
    """
    expected = await recompute(conn)
    for name in db.ROLLUP_COLUMNS:
        table = db.metadata.tables[name]
        await conn.execute(sa.delete(table))
        rows = [(*key, *sums) for key, sums in sorted(expected.tables[name].items())]
        await _insert_spread(conn, table, db.ROLLUP_KEYS[name], db.ROLLUP_COLUMNS[name], rows)
    wrong = (await conn.execute(_WRONG_RETURNED)).all()
    if wrong:
        await conn.execute(
            sa.update(db.sales).where(db.sales.c.id == sa.bindparam("sale_id")).values(returned=sa.bindparam("units")),
            [{"sale_id": sale_id, "units": should} for sale_id, _, should in wrong],
        )
    await db.bump_version(conn, db.DATA)


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
