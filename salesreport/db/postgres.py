"""PostgreSQL's writer: a batch of sales and its rollups, in asyncpg's own transaction.

The hot path talks to asyncpg directly (SQLAlchemy would only add work): the
sales and the three rollups go in one statement and one round trip, fed by
arrays (measured in BENCHMARKS.md).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Collection, Sequence
from datetime import datetime
from typing import Any

from .batch import INSERT_COLUMNS, SALE_COLUMNS, BatchJob, Key, Row, key_order, unsort
from .engines import Database, driver_connection


async def write_batch(database: Database, job: BatchJob, slot: int) -> Any:
    """Run ``job``'s steps (see ``batch``) in one transaction."""
    async with write_transaction(database) as raw:
        keys = job.keys_to_find()
        stored = await find_sales(raw, keys, job.live_after) if keys else {}
        rows = job.plan(stored)
        ids = await insert_sales(raw, rows, slot) if rows else []
        lost = job.lost(ids)
        winners = await find_sales(raw, lost, job.live_after) if lost else {}
        return job.resolve(ids, winners)


@contextlib.asynccontextmanager
async def write_transaction(database: Database) -> AsyncIterator[Any]:
    """An asyncpg transaction on one of the writer's connections.

    A connection found dead is dropped from the pool rather than handed out again.
    """
    async with database.writer.connect() as conn:
        raw = await driver_connection(conn)
        try:
            async with raw.transaction():
                yield raw
        except BaseException:
            if raw.is_closed():
                await conn.invalidate()
            raise


_FIND = f"""
WITH k AS (
    SELECT * FROM unnest($1::bigint[], $2::text[]) AS k(store_id, idempotency_key)
), expired AS (
    UPDATE sales s SET idempotency_key = NULL FROM k
    WHERE s.store_id = k.store_id AND s.idempotency_key = k.idempotency_key AND s.received_at < $3
)
SELECT {", ".join("s." + c for c in SALE_COLUMNS)}
FROM sales s JOIN k ON s.store_id = k.store_id AND s.idempotency_key = k.idempotency_key
WHERE s.received_at >= $3
"""


async def find_sales(raw: Any, keys: Collection[Key], live_after: datetime) -> dict[Key, Row]:
    """The stored sales whose (store, idempotency key) is among ``keys`` and
    still alive; expired keys are cleared from their sales."""
    keys = list(keys)
    records = await raw.fetch(_FIND, [k[0] for k in keys], [k[1] for k in keys], live_after)
    return {(r["store_id"], r["idempotency_key"]): dict(r) for r in records}


# Sequence values follow the ORDER BY of the SELECT, so ids sorted ascending
# are in row order.
_INSERT = """
WITH input AS (
    SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::int[], $4::bigint[], $5::timestamptz[],
                         $6::timestamptz[], $7::int[], $8::text[], $9::int[])
        AS t(store_id, product_id, quantity, unit_price, sold_at, received_at, month, idempotency_key, ord)
), inserted AS (
    INSERT INTO sales (store_id, product_id, quantity, unit_price, amount, sold_at, received_at, month,
                       idempotency_key)
    SELECT store_id, product_id, quantity, unit_price, quantity * unit_price, sold_at, received_at, month,
           idempotency_key
    FROM input ORDER BY ord
    ON CONFLICT (store_id, idempotency_key) DO NOTHING
    RETURNING id, store_id, product_id, quantity, amount, month, idempotency_key
), by_store AS (
    INSERT INTO store_month AS r (store_id, month, slot, revenue, sales)
    SELECT store_id, month, $10, sum(amount), count(*)
    FROM inserted GROUP BY store_id, month ORDER BY store_id, month
    ON CONFLICT (store_id, month, slot)
    DO UPDATE SET revenue = r.revenue + excluded.revenue, sales = r.sales + excluded.sales
), by_product AS (
    INSERT INTO product_month AS r (product_id, month, slot, quantity)
    SELECT product_id, month, $10, sum(quantity)
    FROM inserted GROUP BY product_id, month ORDER BY product_id, month
    ON CONFLICT (product_id, month, slot) DO UPDATE SET quantity = r.quantity + excluded.quantity
), total AS (
    INSERT INTO product_total AS r (product_id, slot, quantity)
    SELECT product_id, $10, sum(quantity)
    FROM inserted GROUP BY product_id ORDER BY product_id
    ON CONFLICT (product_id, slot) DO UPDATE SET quantity = r.quantity + excluded.quantity
)
SELECT id, store_id, idempotency_key FROM inserted ORDER BY id
"""


async def insert_sales(raw: Any, rows: Sequence[Row], slot: int) -> list[int | None]:
    """Insert priced sales, add them to the rollups, return their ids in the order given.

    A row whose key is stored already (or by another writer meanwhile) is left
    out, and its id is None.
    """
    order = sorted(range(len(rows)), key=lambda i: key_order(rows[i]))
    ordered = [rows[i] for i in order]
    arrays = [[row[c] for row in ordered] for c in INSERT_COLUMNS if c != "amount"]  # amount: computed in SQL
    records = await raw.fetch(_INSERT, *arrays, list(range(len(ordered))), slot)
    # Ids ascend in row order; rows whose key was taken are missing.
    kept = {(r["store_id"], r["idempotency_key"]) for r in records if r["idempotency_key"] is not None}
    ids = iter(r["id"] for r in records)
    new_ids = [
        next(ids) if row["idempotency_key"] is None or (row["store_id"], row["idempotency_key"]) in kept else None
        for row in ordered
    ]
    return unsort(order, new_ids)
