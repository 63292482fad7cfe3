"""The catalog's SQL (products, their prices, stores), and the change counters every worker watches."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from ..prices import History, price_at
from .engines import upsert
from .schema import BEGINNING, prices, products, stores, versions

VERSIONED = ("catalog", "keys")
# The counters of what the reports add up: ``data:<slot>``, bumped by each batch in its rollup slot's row
# (concurrent batches then bump different rows, as they add to different rollup rows), and ``data``,
# bumped by the commands that rewrite the rollups (a bulk load, ``check --repair``, ``archive``).
DATA = "data"


def data_version(found: Mapping[str, int]) -> int:
    """The sum of the data counters among ``found`` (counters only grow, so any change moves it)."""
    return sum(version for name, version in found.items() if name == DATA or name.startswith(DATA + ":"))


# Ids per statement when a query names many (an import of a whole catalog): asyncpg takes at most
# 32,767 parameters per statement, SQLite 32,766 variables.
ID_CHUNK = 10_000


def chunks(ids: Sequence[int]) -> list[Sequence[int]]:
    """``ids`` in slices of at most ``ID_CHUNK``, for queries that name them as parameters."""
    return [ids[i : i + ID_CHUNK] for i in range(0, len(ids), ID_CHUNK)]


class CatalogConflict(Exception):
    """The import would rewrite a price already recorded; nothing was written."""


async def list_products(conn: AsyncConnection) -> Sequence[sa.Row[Any]]:
    result = await conn.execute(sa.select(products).order_by(products.c.id))
    return result.all()


async def list_prices(
    conn: AsyncConnection, product_ids: Sequence[int] | None = None
) -> dict[int, list[tuple[datetime, int]]]:
    """Each product's price history, oldest first."""
    query = sa.select(prices).order_by(prices.c.product_id, prices.c.effective_from)
    queries = [query] if product_ids is None else [query.where(prices.c.product_id.in_(c)) for c in chunks(product_ids)]
    histories: dict[int, list[tuple[datetime, int]]] = {}
    for each in queries:
        for row in await conn.execute(each):
            histories.setdefault(row.product_id, []).append((row.effective_from, row.price))
    return histories


async def list_stores(conn: AsyncConnection) -> Sequence[sa.Row[Any]]:
    result = await conn.execute(sa.select(stores).order_by(stores.c.id))
    return result.all()


async def get_version(conn: AsyncConnection, name: str) -> int:
    version = await conn.scalar(sa.select(versions.c.version).where(versions.c.name == name))
    return int(version or 0)


async def bump_version(conn: AsyncConnection, name: str) -> None:
    """Record a change of ``name``; workers learn of it once the transaction commits (see ``changes``)."""
    stmt = upsert(conn, versions).values(name=name, version=1)
    await conn.execute(stmt.on_conflict_do_update(index_elements=["name"], set_={"version": versions.c.version + 1}))


async def save_catalog(
    conn: AsyncConnection,
    product_rows: Sequence[dict[str, Any]],
    store_rows: Sequence[dict[str, Any]],
    *,
    effective: datetime,
) -> list[int]:
    """Insert or update products and stores, bump the catalog version; return the products whose price changed.

    A new product's price is its first (in force from the beginning). A known
    product whose price differs from the one in force at ``effective`` gets a
    new price from ``effective`` on; earlier prices stay as they were, and so
    do the sales recorded already. Rows without ``retired`` (a file without
    that column) leave that flag as it was (false for a new row).
    Raises ``CatalogConflict`` if a different price already takes effect at
    exactly ``effective``.
    """
    changes = []
    if product_rows:
        histories = await list_prices(conn, [row["id"] for row in product_rows])
        conflicts = []
        for row in product_rows:
            history: History = histories.get(row["id"], [])
            if not history:
                changes.append({"product_id": row["id"], "effective_from": BEGINNING, "price": row["price"]})
            elif price_at(history, effective) != row["price"]:
                if any(start == effective for start, _ in history):
                    conflicts.append(
                        f"product {row['id']}: another price already takes effect at {effective.isoformat()}"
                    )
                changes.append({"product_id": row["id"], "effective_from": effective, "price": row["price"]})
        if conflicts:
            raise CatalogConflict("\n".join(conflicts))
    await _upsert(conn, products, [{k: v for k, v in row.items() if k != "price"} for row in product_rows])
    if changes:
        await conn.execute(sa.insert(prices), changes)
    await _upsert(conn, stores, store_rows)
    await bump_version(conn, "catalog")
    return [change["product_id"] for change in changes if change["effective_from"] != BEGINNING]


async def _upsert(conn: AsyncConnection, table: sa.Table, rows: Sequence[dict[str, Any]]) -> None:
    if not rows:
        return
    stmt = upsert(conn, table)
    columns = {name: stmt.excluded[name] for name in rows[0] if name != "id"}
    await conn.execute(stmt.on_conflict_do_update(index_elements=["id"], set_=columns), list(rows))


async def set_retired(conn: AsyncConnection, table: sa.Table, ids: Sequence[int], retired: bool) -> list[int]:
    """Retire (or bring back) products or stores; return the ids that do not exist."""
    found = set(await conn.scalars(sa.select(table.c.id).where(table.c.id.in_(ids))))
    await conn.execute(sa.update(table).where(table.c.id.in_(ids)).values(retired=retired))
    await bump_version(conn, "catalog")
    return [i for i in ids if i not in found]


async def schema_revision(conn: AsyncConnection) -> str | None:
    """The Alembic revision the database is at; None if it was never migrated."""
    exists = await conn.run_sync(lambda sync: sa.inspect(sync).has_table("alembic_version"))
    if not exists:
        return None
    value = await conn.scalar(sa.text("SELECT version_num FROM alembic_version"))
    return str(value) if value is not None else None
