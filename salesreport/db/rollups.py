"""Adding sales into the rollups, and the bulk path for history loads."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from .engines import driver_connection, upsert
from .schema import product_month, product_total, sales, store_month

StoreRevenue = dict[tuple[int, int], tuple[int, int]]
ProductQuantity = dict[tuple[int, int], int]
ProductTotals = dict[int, int]


def aggregate(rows: Iterable[dict[str, Any]]) -> tuple[StoreRevenue, ProductQuantity, ProductTotals]:
    """Sum sales as the rollups hold them: revenue and count by (store, month),
    quantity by (product, month), and quantity by product."""
    store_revenue: StoreRevenue = {}
    product_quantity: ProductQuantity = {}
    product_totals: ProductTotals = {}
    for row in rows:
        key = (row["store_id"], row["month"])
        revenue, count = store_revenue.get(key, (0, 0))
        store_revenue[key] = (revenue + row["amount"], count + 1)
        pkey = (row["product_id"], row["month"])
        product_quantity[pkey] = product_quantity.get(pkey, 0) + row["quantity"]
        product_totals[row["product_id"]] = product_totals.get(row["product_id"], 0) + row["quantity"]
    return store_revenue, product_quantity, product_totals


async def add_to_rollups(
    conn: AsyncConnection,
    slot: int,
    store_revenue: StoreRevenue,
    product_quantity: ProductQuantity,
    product_totals: ProductTotals,
) -> None:
    """Add aggregates into the rollups (the bulk path; batches do it in their own SQL).

    Keys are written in sorted order, so two writers that touch the same rows
    lock them in the same order and cannot deadlock.
    """
    if store_revenue:
        stmt = upsert(conn, store_month)
        stmt = stmt.on_conflict_do_update(
            index_elements=["store_id", "month", "slot"],
            set_={
                "revenue": store_month.c.revenue + stmt.excluded.revenue,
                "sales": store_month.c.sales + stmt.excluded.sales,
            },
        )
        await conn.execute(
            stmt,
            [
                {"store_id": s, "month": m, "slot": slot, "revenue": r, "sales": n}
                for (s, m), (r, n) in sorted(store_revenue.items())
            ],
        )
    if product_quantity:
        stmt = upsert(conn, product_month)
        stmt = stmt.on_conflict_do_update(
            index_elements=["product_id", "month", "slot"],
            set_={"quantity": product_month.c.quantity + stmt.excluded.quantity},
        )
        await conn.execute(
            stmt,
            [
                {"product_id": p, "month": m, "slot": slot, "quantity": q}
                for (p, m), q in sorted(product_quantity.items())
            ],
        )
        stmt = upsert(conn, product_total)
        stmt = stmt.on_conflict_do_update(
            index_elements=["product_id", "slot"],
            set_={"quantity": product_total.c.quantity + stmt.excluded.quantity},
        )
        await conn.execute(
            stmt,
            [{"product_id": p, "slot": slot, "quantity": q} for p, q in sorted(product_totals.items())],
        )


async def insert_sales_bulk(conn: AsyncConnection, rows: Sequence[dict[str, Any]]) -> None:
    """Insert sales without reading anything back (history loads)."""
    if conn.dialect.name == "postgresql":
        # COPY is several times faster than INSERT for millions of rows.
        raw = await driver_connection(conn)
        columns = [c.name for c in sales.columns if c.name != "id"]
        records = [tuple(row[c] for c in columns) for row in rows]
        await raw.copy_records_to_table("sales", records=records, columns=columns)
    else:
        await conn.execute(sa.insert(sales), list(rows))


async def store_history(conn: AsyncConnection, rows: Sequence[dict[str, Any]], slot: int = 0) -> None:
    """The bulk path: insert already-priced sales and their rollups, no answers."""
    await insert_sales_bulk(conn, rows)
    await add_to_rollups(conn, slot, *aggregate(rows))
