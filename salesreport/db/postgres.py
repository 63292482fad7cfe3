"""PostgreSQL's writer: a batch of sales (or of returns) and its rollups, on asyncpg directly.

The hot path talks to asyncpg directly (SQLAlchemy would only add work): the
sales, their keys and the four rollups go in one statement and one round trip,
fed by arrays (measured in BENCHMARKS.md). A batch of sales whose keys are all
new (the first attempt, see ``batch``) is that one statement alone, committed
by itself: a key stored before makes it fail whole with a unique violation, and
the batcher tries again in a transaction that looks the keys up first. Each
batcher keeps its connection between batches (``write_connection``).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator, Collection, Sequence
from datetime import UTC, datetime
from typing import Any

from .batch import (
    INSERT_COLUMNS,
    RETURN_COLUMNS,
    RETURN_INSERT_COLUMNS,
    SALE_COLUMNS,
    BatchJob,
    Key,
    ReturnJob,
    Row,
    key_order,
    unsort,
)
from .engines import Database, driver_connection, is_unavailable
from .pooling import DURABLE, is_pooled
from .schema import SLOTS

# The advisory lock class of rollup slots: a batch holds its slot's lock until it commits.
SLOT_LOCKS = 0x5A1E


async def write_batch(database: Database, job: BatchJob, slot: int) -> Any:
    """Run ``job``'s steps (see ``batch``) in one transaction."""
    keys = job.keys_to_find()
    async with write_connection(database) as (raw, pooled):
        if not keys and not pooled:  # through a pooler, synchronous_commit is set in a transaction
            rows = job.plan({})
            ids = await insert_sales(raw, rows, slot, strict=True) if rows else []
            return job.resolve(ids, {})
        async with _transaction(raw, pooled):
            stored = await find_sales(raw, keys, job.live_after) if keys else {}
            rows = job.plan(stored)
            ids = await insert_sales(raw, rows, slot) if rows else []
            lost = job.lost(ids)
            winners = await find_sales(raw, lost, job.live_after) if lost else {}
            return job.resolve(ids, winners)


@contextlib.asynccontextmanager
async def write_transaction(database: Database) -> AsyncIterator[Any]:
    """An asyncpg transaction on one of the writer's connections."""
    async with write_connection(database) as (raw, pooled), _transaction(raw, pooled):
        yield raw


@contextlib.asynccontextmanager
async def _transaction(raw: Any, pooled: bool) -> AsyncIterator[None]:
    async with raw.transaction():
        if pooled:
            await raw.execute(DURABLE)
        yield


@contextlib.asynccontextmanager
async def write_connection(database: Database) -> AsyncIterator[tuple[Any, bool]]:
    """One of the writer's asyncpg connections, and whether it goes through a pooler.

    A batcher writes one batch at a time, so the connection it used is kept for
    its next batch (``Database.held``) rather than returned to the pool: no
    checkout, no reset. A connection found dead, or left in an unknown state
    (a cancelled statement), is closed rather than kept.
    """
    conn: Any = None
    raw: Any = None
    while database.held:
        conn, raw, pooled = database.held.pop()
        if not raw.is_closed():
            break
        # Closed while it was held (the server restarted, or ended its backend): a batch on it would
        # fail for nothing, and its requests get 503, though the database may be back by now.
        await _discard(conn)
        conn = raw = None
    if conn is None:
        conn = await database.writer.connect()
    kept = False
    try:
        if raw is None:
            raw = await driver_connection(conn)
            pooled = is_pooled((await conn.get_raw_connection()).info)
        try:
            yield raw, pooled
        except Exception as exc:
            # An error the server reported leaves the connection usable; one that says the database is
            # away may have left it ended by the server, its close not read yet.
            kept = _reusable(raw) and not is_unavailable(exc)
            raise
        kept = _reusable(raw)
    finally:
        if kept:
            database.held.append((conn, raw, pooled))
        else:  # cancelled mid-statement, dead, or left in a transaction
            await _discard(conn)


async def _discard(conn: Any) -> None:
    """A writer's connection that is not to be used again, out of its pool."""
    await conn.invalidate()
    await conn.close()


def _reusable(raw: Any) -> bool:
    return raw is not None and not raw.is_closed() and not raw.is_in_transaction()


# The two statements' common steps, after their ``inserted`` rows (parameter $11: ``_preference``).
_SLOT = f"""), slot AS (
    -- The first rollup slot no other batch holds, from this writer's own on (see ``_preference``).
    SELECT coalesce(
        (SELECT s FROM unnest($11::int[]) AS s WHERE pg_try_advisory_xact_lock({SLOT_LOCKS}, s) LIMIT 1), $11[1]
    ) AS slot
"""
_DATA = """), data AS (
    -- The reports' data changed: this slot's counter (see ``catalog.DATA``), if anything was inserted.
    INSERT INTO versions AS v (name, version)
    SELECT 'data:' || (SELECT slot FROM slot), 1 WHERE EXISTS (SELECT FROM inserted)
    ON CONFLICT (name) DO UPDATE SET version = v.version + 1
"""


# Keys live in ``sale_keys`` (``sales`` is partitioned, see ``schema``); its month finds the sale's partition.
_FIND = f"""
WITH k AS (
    SELECT * FROM unnest($1::bigint[], $2::text[]) AS k(store_id, idempotency_key)
), expired AS (
    DELETE FROM sale_keys sk USING k
    WHERE sk.store_id = k.store_id AND sk.idempotency_key = k.idempotency_key AND sk.received_at < $3
    RETURNING sk.sale_id, sk.month
), cleared AS (
    UPDATE sales s SET idempotency_key = NULL FROM expired e WHERE s.id = e.sale_id AND s.month = e.month
)
SELECT {", ".join("s." + c for c in SALE_COLUMNS)}
FROM sale_keys sk JOIN k ON sk.store_id = k.store_id AND sk.idempotency_key = k.idempotency_key
JOIN sales s ON s.id = sk.sale_id AND s.month = sk.month
WHERE sk.received_at >= $3
"""


async def find_sales(raw: Any, keys: Collection[Key], live_after: datetime) -> dict[Key, Row]:
    """The stored sales whose (store, idempotency key) is among ``keys`` and
    still alive; expired keys are cleared from their sales."""
    keys = list(keys)
    records = await raw.fetch(_FIND, [k[0] for k in keys], [k[1] for k in keys], live_after)
    return {(r["store_id"], r["idempotency_key"]): dict(r) for r in records}


# Sequence values follow the ORDER BY of the SELECT, so ids sorted ascending
# are in row order. A keyed sale is inserted only if its key went into
# ``sale_keys`` (the unique index a partitioned ``sales`` cannot have).
# The rollup sums are ``rollups.Rollups.add_sales`` in SQL.
_INSERT = f"""
WITH input AS (
    SELECT nextval('sales_id_seq') AS id, t.* FROM (
        SELECT * FROM unnest($1::text::bigint[], $2::text::bigint[], $3::text::int[], $4::text::bigint[],
                             $5::text::timestamptz[], $6::text::timestamptz[], $7::text::int[], $8::text[],
                             $9::text::bigint[], $10::text::int[])
            AS t(store_id, product_id, quantity, unit_price, sold_at, received_at, month, idempotency_key,
                 catalog_price, ord)
        ORDER BY ord
    ) t
), keyed AS (
    INSERT INTO sale_keys (store_id, idempotency_key, sale_id, month, received_at)
    SELECT store_id, idempotency_key, id, month, received_at FROM input
    WHERE idempotency_key IS NOT NULL ORDER BY ord
    ON CONFLICT (store_id, idempotency_key) DO NOTHING
    RETURNING sale_id
), inserted AS (
    INSERT INTO sales (id, store_id, product_id, quantity, unit_price, amount, sold_at, received_at, month,
                       idempotency_key, catalog_price)
    SELECT id, store_id, product_id, quantity, unit_price, quantity * unit_price, sold_at, received_at, month,
           idempotency_key, catalog_price
    FROM input WHERE idempotency_key IS NULL OR id IN (SELECT sale_id FROM keyed) ORDER BY ord
    RETURNING id, store_id, product_id, quantity, amount, (catalog_price - unit_price) * quantity AS discount,
              month, idempotency_key
{_SLOT}), by_store AS (
    INSERT INTO store_month AS r (store_id, month, slot, revenue, sales, refunds, discounts)
    SELECT store_id, month, (SELECT slot FROM slot), sum(amount), count(*), 0, sum(discount)
    FROM inserted GROUP BY store_id, month ORDER BY store_id, month
    ON CONFLICT (store_id, month, slot)
    DO UPDATE SET revenue = r.revenue + excluded.revenue, sales = r.sales + excluded.sales,
                  discounts = r.discounts + excluded.discounts
), by_product AS (
    INSERT INTO product_month AS r (product_id, month, slot, quantity, returned, revenue)
    SELECT product_id, month, (SELECT slot FROM slot), sum(quantity), 0, sum(amount)
    FROM inserted GROUP BY product_id, month ORDER BY product_id, month
    ON CONFLICT (product_id, month, slot)
    DO UPDATE SET quantity = r.quantity + excluded.quantity, revenue = r.revenue + excluded.revenue
), total AS (
    INSERT INTO product_total AS r (product_id, slot, quantity, returned, revenue)
    SELECT product_id, (SELECT slot FROM slot), sum(quantity), 0, sum(amount)
    FROM inserted GROUP BY product_id ORDER BY product_id
    ON CONFLICT (product_id, slot)
    DO UPDATE SET quantity = r.quantity + excluded.quantity, revenue = r.revenue + excluded.revenue
), by_store_product AS (
    INSERT INTO store_product_month AS r (store_id, product_id, month, slot, quantity, returned, revenue)
    SELECT store_id, product_id, month, (SELECT slot FROM slot), sum(quantity), 0, sum(amount)
    FROM inserted GROUP BY store_id, product_id, month ORDER BY store_id, product_id, month
    ON CONFLICT (store_id, product_id, month, slot)
    DO UPDATE SET quantity = r.quantity + excluded.quantity, revenue = r.revenue + excluded.revenue
{_DATA})
SELECT id, store_id, idempotency_key FROM inserted ORDER BY id
"""


# The first attempt's statement: a key stored before fails it whole (unique violation), so every row
# is inserted, and its ids come back as one array (a record per row costs the client ~0.4 µs more).
_INSERT_STRICT = _INSERT.replace("    ON CONFLICT (store_id, idempotency_key) DO NOTHING\n", "", 1).replace(
    "SELECT id, store_id, idempotency_key FROM inserted ORDER BY id", "SELECT array_agg(id ORDER BY id) FROM inserted"
)
assert _INSERT_STRICT.count("ON CONFLICT") == _INSERT.count("ON CONFLICT") - 1 and "array_agg" in _INSERT_STRICT


def _for_one_row(statement: str) -> str:
    """``statement`` for a batch of one sale: its row as one value per parameter (``_scalars``) rather
    than arrays to unnest, and the same steps without sorting or grouping that row (with one row,
    ``sum(x)`` is ``x`` and ``count(*)`` is 1, and the order is the row).

    A lone sale's statement is what a till waits on when nothing shares its batch, and PostgreSQL
    builds every Sort, Agg and function scan of a statement again at each execution, and parses each
    array: with four rollups, about a quarter of the statement's instructions (BENCHMARKS.md, "Notes").
    """
    one, unnests = re.subn(
        r"unnest\((.*?)\)\n(\s+)AS t\(",
        lambda m: "(VALUES (" + m[1].replace("[]", "") + "))\n" + m[2] + "AS t(",
        statement,
        flags=re.DOTALL,
    )
    one, sorts = re.subn(r"\s+ORDER BY ord\b", "", one)
    one, groups = re.subn(r"\n    FROM inserted GROUP BY [\w, ]+ ORDER BY [\w, ]+\n", "\n    FROM inserted\n", one)
    one = re.sub(r"\bsum\((\w+)\)", r"\1", one).replace("count(*)", "1")
    assert unnests == 1 and sorts == 3 and groups == 4 and "sum(" not in one and "GROUP BY" not in one
    return one


_INSERT_ONE = _for_one_row(_INSERT_STRICT)
# The sales statements' input columns, $1 to $9 (and the rows' order, $10): ``amount`` is computed in SQL.
_INPUT = tuple(c for c in INSERT_COLUMNS if c != "amount")


async def insert_sales(raw: Any, rows: Sequence[Row], slot: int, *, strict: bool = False) -> list[int | None]:
    """Insert priced sales, add them to the rollups, return their ids in the order given.

    A row whose key is stored already (or by another writer meanwhile) is left
    out, and its id is None; ``strict``: it fails the statement instead.
    """
    if strict and len(rows) == 1:
        one: list[int | None] = await raw.fetchval(_INSERT_ONE, *_scalars(rows[0], _INPUT), _preference(slot))
        assert len(one) == 1
        return one
    order = sorted(range(len(rows)), key=lambda i: key_order(rows[i]))
    ordered = [rows[i] for i in order]
    arrays = _arrays(ordered, _INPUT)
    if strict:
        ids: list[int | None] = await raw.fetchval(_INSERT_STRICT, *arrays, _preference(slot))
        assert len(ids) == len(rows)
        return unsort(order, ids)
    records = await raw.fetch(_INSERT, *arrays, _preference(slot))
    return unsort(order, _ids_in_order(ordered, records))


def _arrays(rows: Sequence[Row], columns: Sequence[str]) -> list[Any]:
    """The statement's input, a parameter per column and one for the rows' order: the keys as a list,
    every other column as the text of a PostgreSQL array (``{1,2,3}``).

    asyncpg's own encoding of a list checks every element against three abstract base classes, and
    converts every instant on its own: 0.66 µs per number and 2.6 µs per instant on the machine of
    BENCHMARKS.md ("Notes"), a quarter of the server's CPU for a 100-sale POST. The instants of a
    request's sales are mostly one object (the time it arrived), written once. All are numbers or
    aware instants, never NULL (the rows, and so their objects, live until the call returns).
    """
    arrays: list[Any] = []
    texts: dict[int, str] = {}  # by object: a sale's time of sale is mostly its request's time of arrival
    for column in columns:
        values = [row[column] for row in rows]
        if column == "idempotency_key":
            arrays.append(values)
        elif isinstance(values[0], datetime):
            for value in values:
                if id(value) not in texts:
                    texts[id(value)] = _text(value)
            arrays.append("{" + ",".join([texts[id(value)] for value in values]) + "}")
        else:
            arrays.append("{" + ",".join(map(str, values)) + "}")
    arrays.append("{" + ",".join(map(str, range(len(rows)))) + "}")
    return arrays


def _scalars(row: Row, columns: Sequence[str]) -> list[Any]:
    """One row's input to ``_INSERT_ONE``: the parameters of ``_arrays``, a value each instead of an array."""
    return [row[c] if c == "idempotency_key" else _text(row[c]) for c in columns] + ["0"]


def _text(value: Any) -> str:
    """A number or an aware instant as PostgreSQL reads it from text (an instant in UTC)."""
    if not isinstance(value, datetime):
        return str(value)
    if value.tzinfo is None:  # would be read in the session's time zone
        raise ValueError(f"a naive instant: {value!r}")
    return value.astimezone(UTC).isoformat()


# --- returns -------------------------------------------------------------------


async def write_returns(database: Database, job: ReturnJob, slot: int) -> Any:
    """Run ``job``'s steps (see ``batch.ReturnJob``) in one transaction."""
    async with write_transaction(database) as raw:
        sales = await lock_sales(raw, job.sales_to_lock())
        keys = job.keys_to_find(sales)
        stored = await find_returns(raw, keys, job.live_after) if keys else {}
        rows = job.plan(stored, sales)
        ids = await insert_returns(raw, rows, slot) if rows else []
        return job.resolve(ids)


_FIND_RETURNS = f"""
WITH k AS (
    SELECT * FROM unnest($1::bigint[], $2::text[]) AS k(store_id, idempotency_key)
), expired AS (
    UPDATE returns r SET idempotency_key = NULL FROM k
    WHERE r.store_id = k.store_id AND r.idempotency_key = k.idempotency_key AND r.received_at < $3
)
SELECT {", ".join("r." + c for c in RETURN_COLUMNS)}
FROM returns r JOIN k ON r.store_id = k.store_id AND r.idempotency_key = k.idempotency_key
WHERE r.received_at >= $3
"""


async def find_returns(raw: Any, keys: Collection[Key], live_after: datetime) -> dict[Key, Row]:
    keys = list(keys)
    records = await raw.fetch(_FIND_RETURNS, [k[0] for k in keys], [k[1] for k in keys], live_after)
    return {(r["store_id"], r["idempotency_key"]): dict(r) for r in records}


# In id order, so that two writers locking the same sales cannot deadlock.
_LOCK_SALES = f"""
SELECT {", ".join(SALE_COLUMNS)} FROM sales WHERE id = ANY($1::bigint[]) ORDER BY id FOR UPDATE
"""


async def lock_sales(raw: Any, ids: Collection[int]) -> dict[int, Row]:
    """The sales with these ids, locked until the transaction ends."""
    records = await raw.fetch(_LOCK_SALES, sorted(ids))
    return {r["id"]: dict(r) for r in records}


# The rollup sums are ``rollups.Rollups.add_returns`` in SQL.
_INSERT_RETURNS = f"""
WITH input AS (
    SELECT * FROM unnest($1::text::bigint[], $2::text::bigint[], $3::text::bigint[], $4::text::int[],
                         $5::text::bigint[], $6::text::timestamptz[], $7::text::timestamptz[], $8::text::int[],
                         $9::text[], $10::text::int[])
        AS t(sale_id, store_id, product_id, quantity, unit_price, returned_at, received_at, month,
             idempotency_key, ord)
), inserted AS (
    INSERT INTO returns (sale_id, store_id, product_id, quantity, unit_price, amount, returned_at, received_at,
                         month, idempotency_key)
    SELECT sale_id, store_id, product_id, quantity, unit_price, quantity * unit_price, returned_at, received_at,
           month, idempotency_key
    FROM input ORDER BY ord
    ON CONFLICT (store_id, idempotency_key) DO NOTHING
    RETURNING id, sale_id, store_id, product_id, quantity, amount, month, idempotency_key
{_SLOT}), by_sale AS (
    UPDATE sales s SET returned = s.returned + i.quantity
    FROM (SELECT sale_id, sum(quantity) AS quantity FROM inserted GROUP BY sale_id) i
    WHERE s.id = i.sale_id
), by_store AS (
    INSERT INTO store_month AS r (store_id, month, slot, revenue, sales, refunds, discounts)
    SELECT store_id, month, (SELECT slot FROM slot), -sum(amount), 0, sum(amount), 0
    FROM inserted GROUP BY store_id, month ORDER BY store_id, month
    ON CONFLICT (store_id, month, slot)
    DO UPDATE SET revenue = r.revenue + excluded.revenue, refunds = r.refunds + excluded.refunds
), by_product AS (
    INSERT INTO product_month AS r (product_id, month, slot, quantity, returned, revenue)
    SELECT product_id, month, (SELECT slot FROM slot), -sum(quantity), sum(quantity), -sum(amount)
    FROM inserted GROUP BY product_id, month ORDER BY product_id, month
    ON CONFLICT (product_id, month, slot)
    DO UPDATE SET quantity = r.quantity + excluded.quantity, returned = r.returned + excluded.returned,
                  revenue = r.revenue + excluded.revenue
), total AS (
    INSERT INTO product_total AS r (product_id, slot, quantity, returned, revenue)
    SELECT product_id, (SELECT slot FROM slot), -sum(quantity), sum(quantity), -sum(amount)
    FROM inserted GROUP BY product_id ORDER BY product_id
    ON CONFLICT (product_id, slot)
    DO UPDATE SET quantity = r.quantity + excluded.quantity, returned = r.returned + excluded.returned,
                  revenue = r.revenue + excluded.revenue
), by_store_product AS (
    INSERT INTO store_product_month AS r (store_id, product_id, month, slot, quantity, returned, revenue)
    SELECT store_id, product_id, month, (SELECT slot FROM slot), -sum(quantity), sum(quantity), -sum(amount)
    FROM inserted GROUP BY store_id, product_id, month ORDER BY store_id, product_id, month
    ON CONFLICT (store_id, product_id, month, slot)
    DO UPDATE SET quantity = r.quantity + excluded.quantity, returned = r.returned + excluded.returned,
                  revenue = r.revenue + excluded.revenue
{_DATA})
SELECT id, store_id, idempotency_key FROM inserted ORDER BY id
"""


async def insert_returns(raw: Any, rows: Sequence[Row], slot: int) -> list[int | None]:
    """Insert returns, add them to their sales and the rollups, return their ids in the order given
    (None for a row whose key another writer took meanwhile)."""
    order = sorted(range(len(rows)), key=lambda i: key_order(rows[i]))
    ordered = [rows[i] for i in order]
    arrays = _arrays(ordered, [c for c in RETURN_INSERT_COLUMNS if c != "amount"])
    records = await raw.fetch(_INSERT_RETURNS, *arrays, _preference(slot))
    return unsort(order, _ids_in_order(ordered, records))


def _preference(slot: int) -> list[int]:
    """The rollup slots in the order a writer whose own slot is ``slot`` tries them.

    Each batch takes the first that no other batch in flight holds (an
    advisory lock for its transaction, so it also works through a
    transaction pooler): concurrent writers add into different rows instead
    of queueing on one. Which slot a sale is added to never changes a report
    (they are summed); if all are taken the batch shares ``slot``.
    """
    return [(slot + i) % SLOTS for i in range(SLOTS)]


def _ids_in_order(ordered: Sequence[Row], records: Sequence[Any]) -> list[int | None]:
    """Ids ascend in row order; rows whose key was taken are missing from ``records``."""
    kept = {(r["store_id"], r["idempotency_key"]) for r in records if r["idempotency_key"] is not None}
    ids = iter(r["id"] for r in records)
    return [
        next(ids) if row["idempotency_key"] is None or (row["store_id"], row["idempotency_key"]) in kept else None
        for row in ordered
    ]
