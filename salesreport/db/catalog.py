"""The catalog's SQL, and the change counters every worker watches."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from .engines import upsert
from .schema import products, stores, versions

CHANNEL = "salesreport_changes"
VERSIONED = ("catalog", "keys")


async def list_products(conn: AsyncConnection) -> Sequence[sa.Row[Any]]:
    result = await conn.execute(sa.select(products).order_by(products.c.id))
    return result.all()


async def list_stores(conn: AsyncConnection) -> Sequence[sa.Row[Any]]:
    result = await conn.execute(sa.select(stores).order_by(stores.c.id))
    return result.all()


async def get_version(conn: AsyncConnection, name: str) -> int:
    version = await conn.scalar(sa.select(versions.c.version).where(versions.c.name == name))
    return int(version or 0)


async def bump_version(conn: AsyncConnection, name: str) -> None:
    """Record a change of ``name``; workers learn of it when the transaction commits."""
    stmt = upsert(conn, versions).values(name=name, version=1)
    await conn.execute(stmt.on_conflict_do_update(index_elements=["name"], set_={"version": versions.c.version + 1}))
    if conn.dialect.name == "postgresql":
        await conn.execute(sa.select(sa.func.pg_notify(CHANNEL, name)))


async def save_catalog(
    conn: AsyncConnection,
    product_rows: Sequence[dict[str, Any]],
    store_rows: Sequence[dict[str, Any]],
) -> None:
    """Insert or update products and stores and bump the catalog version."""
    for table, rows in ((products, product_rows), (stores, store_rows)):
        if not rows:
            continue
        stmt = upsert(conn, table)
        columns = {c.name: stmt.excluded[c.name] for c in table.columns if not c.primary_key}
        await conn.execute(stmt.on_conflict_do_update(index_elements=["id"], set_=columns), list(rows))
    await bump_version(conn, "catalog")


async def schema_revision(conn: AsyncConnection) -> str | None:
    """The Alembic revision the database is at; None if it was never migrated."""
    exists = await conn.run_sync(lambda sync: sa.inspect(sync).has_table("alembic_version"))
    if not exists:
        return None
    value = await conn.scalar(sa.text("SELECT version_num FROM alembic_version"))
    return str(value) if value is not None else None
