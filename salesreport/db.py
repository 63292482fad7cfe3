"""The schema, the engines, and the SQL that reads and writes it.

Both databases share one schema. Money is integer minor units (``BIGINT``);
instants are UTC; ``month`` is a sale's month in its store's local calendar as
an integer ``YYYYMM``, computed once when the sale is stored.

The rollup tables hold one row per key and *slot*: each writer process adds
into its own slot so that concurrent writers never queue on one hot row, and
readers sum the slots.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import sqlite3
from collections.abc import AsyncIterator, Generator, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from .config import Settings

SLOTS = 8

# What a database that is down, restarting or overloaded raises through
# SQLAlchemy: callers answer 503 for these.
ERRORS = (sa.exc.DBAPIError, sa.exc.TimeoutError, OSError, TimeoutError)


class UTCDateTime(sa.TypeDecorator[datetime]):
    """A timezone-aware instant, stored in UTC (SQLite keeps it as naive text)."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


metadata = sa.MetaData()

products = sa.Table(
    "products",
    metadata,
    sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("price", sa.BigInteger, nullable=False),
    sa.CheckConstraint("price > 0", name="products_price_positive"),
)

stores = sa.Table(
    "stores",
    metadata,
    sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("address", sa.String(500), nullable=False),
    sa.Column("timezone", sa.String(64), nullable=False),
)

# No foreign keys: they halve the batched insert rate (see BENCHMARKS.md);
# the writer checks ids against its copy of the catalog, and catalog rows are
# never deleted.
sales = sa.Table(
    "sales",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True),
    sa.Column("store_id", sa.BigInteger, nullable=False),
    sa.Column("product_id", sa.BigInteger, nullable=False),
    sa.Column("quantity", sa.Integer, nullable=False),
    sa.Column("unit_price", sa.BigInteger, nullable=False),
    sa.Column("amount", sa.BigInteger, nullable=False),
    sa.Column("sold_at", UTCDateTime, nullable=False),
    sa.Column("received_at", UTCDateTime, nullable=False),
    sa.Column("month", sa.Integer, nullable=False),
    sa.Column("idempotency_key", sa.String(128), nullable=True),
    sa.UniqueConstraint("store_id", "idempotency_key", name="sales_store_id_idempotency_key_key"),
)

store_month = sa.Table(
    "store_month",
    metadata,
    sa.Column("store_id", sa.BigInteger, primary_key=True),
    sa.Column("month", sa.Integer, primary_key=True),
    sa.Column("slot", sa.SmallInteger, primary_key=True),
    sa.Column("revenue", sa.BigInteger, nullable=False),
    sa.Column("sales", sa.BigInteger, nullable=False),
    sa.Index("store_month_month_idx", "month"),
)

product_month = sa.Table(
    "product_month",
    metadata,
    sa.Column("product_id", sa.BigInteger, primary_key=True),
    sa.Column("month", sa.Integer, primary_key=True),
    sa.Column("slot", sa.SmallInteger, primary_key=True),
    sa.Column("quantity", sa.BigInteger, nullable=False),
    sa.Index("product_month_month_idx", "month"),
)

product_total = sa.Table(
    "product_total",
    metadata,
    sa.Column("product_id", sa.BigInteger, primary_key=True),
    sa.Column("slot", sa.SmallInteger, primary_key=True),
    sa.Column("quantity", sa.BigInteger, nullable=False),
)

# Change counters, one row per name ("catalog", "keys"): every process holds
# a copy of the catalog and of the API keys, and reloads when a counter moves.
versions = sa.Table(
    "versions",
    metadata,
    sa.Column("name", sa.String(32), primary_key=True),
    sa.Column("version", sa.BigInteger, nullable=False),
)

api_keys = sa.Table(
    "api_keys",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("hash", sa.String(64), nullable=False, unique=True),
    sa.Column("role", sa.String(16), nullable=False),
    sa.Column("store_id", sa.BigInteger, nullable=True),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("last_used_at", UTCDateTime, nullable=True),
    sa.Column("revoked_at", UTCDateTime, nullable=True),
    sa.CheckConstraint("role IN ('owner', 'pos')", name="api_keys_role"),
    sa.CheckConstraint("(role = 'pos') = (store_id IS NOT NULL)", name="api_keys_pos_has_store"),
)


class SQLiteWriter:
    """SQLite's one writer: a connection of its own, in a thread of its own.

    Every batch runs there start to finish (``BEGIN IMMEDIATE`` to ``COMMIT``),
    so the event loop hands it over once; with aiosqlite each statement would
    be a round trip through a loop that is busy serving requests.
    """

    def __init__(self, path: str) -> None:
        self._path = path
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-writer")
        self._conn: sqlite3.Connection | None = None

    async def run(self, steps: Steps, slot: int) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._executor, self._run, steps, slot)

    def close(self) -> None:
        self._executor.submit(self._close).result()
        self._executor.shutdown()

    def _close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            self._conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
            for pragma in _SQLITE_PRAGMAS:
                self._conn.execute(pragma)
        return self._conn

    def _run(self, steps: Steps, slot: int) -> Any:
        conn = self._connection()
        conn.execute("BEGIN IMMEDIATE")
        try:
            request = next(steps)
            while True:
                kind, argument = request
                answer = self._find(conn, argument) if kind == "find" else self._insert(conn, argument, slot)
                try:
                    request = steps.send(answer)
                except StopIteration as done:
                    conn.execute("COMMIT")
                    return done.value
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    @staticmethod
    def _find(conn: sqlite3.Connection, keys: Iterable[tuple[int, str]]) -> dict[tuple[int, str], dict[str, Any]]:
        found = {}
        for key in keys:
            row = conn.execute(_SQLITE_FIND, key).fetchone()
            if row is not None:
                sale = dict(zip(_SALE_COLUMNS, row, strict=True))
                sale["sold_at"] = datetime.fromisoformat(sale["sold_at"]).replace(tzinfo=UTC)
                found[key] = sale
        return found

    @staticmethod
    def _insert(conn: sqlite3.Connection, rows: Sequence[dict[str, Any]], slot: int) -> list[int | None]:
        order = sorted(range(len(rows)), key=lambda i: _key_order(rows[i]))
        new_ids: list[int | None] = []
        inserted = []
        for i in order:
            row = rows[i]
            values = [row[c] for c in _INSERT_COLUMNS]
            values[5] = _sqlite_time(row["sold_at"])
            values[6] = _sqlite_time(row["received_at"])
            result = conn.execute(_SQLITE_INSERT, values).fetchone()
            new_ids.append(result[0] if result else None)
            if result:
                inserted.append(row)
        store_revenue, product_quantity, product_totals = aggregate(inserted)
        conn.executemany(
            _SQLITE_ADD_STORE,
            [(s, m, slot, r, n) for (s, m), (r, n) in sorted(store_revenue.items())],
        )
        conn.executemany(_SQLITE_ADD_PRODUCT, [(p, m, slot, q) for (p, m), q in sorted(product_quantity.items())])
        conn.executemany(_SQLITE_ADD_TOTAL, [(p, slot, q) for p, q in sorted(product_totals.items())])
        return _unsort(order, new_ids)


def _sqlite_time(value: datetime) -> str:
    # The text form SQLAlchemy's SQLite DateTime reads and writes (UTC here).
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")


_SQLITE_PRAGMAS = ("PRAGMA journal_mode=WAL", "PRAGMA synchronous=FULL", "PRAGMA busy_timeout=10000")
_INSERT_COLUMNS = (
    "store_id",
    "product_id",
    "quantity",
    "unit_price",
    "amount",
    "sold_at",
    "received_at",
    "month",
    "idempotency_key",
)
_SQLITE_INSERT = f"""
INSERT INTO sales ({", ".join(_INSERT_COLUMNS)}) VALUES ({", ".join("?" * len(_INSERT_COLUMNS))})
ON CONFLICT (store_id, idempotency_key) DO NOTHING RETURNING id
"""
_SQLITE_ADD_STORE = """
INSERT INTO store_month (store_id, month, slot, revenue, sales) VALUES (?, ?, ?, ?, ?)
ON CONFLICT (store_id, month, slot)
DO UPDATE SET revenue = revenue + excluded.revenue, sales = sales + excluded.sales
"""
_SQLITE_ADD_PRODUCT = """
INSERT INTO product_month (product_id, month, slot, quantity) VALUES (?, ?, ?, ?)
ON CONFLICT (product_id, month, slot) DO UPDATE SET quantity = quantity + excluded.quantity
"""
_SQLITE_ADD_TOTAL = """
INSERT INTO product_total (product_id, slot, quantity) VALUES (?, ?, ?)
ON CONFLICT (product_id, slot) DO UPDATE SET quantity = quantity + excluded.quantity
"""


@dataclass(frozen=True, slots=True)
class Database:
    """Readers use ``reader``; the process's one writer uses ``writer``.

    Readers run in autocommit: one statement, one round trip (a reader that
    needs a snapshot over several statements sets its isolation level). On
    PostgreSQL both share one pool. On SQLite the writer is a single connection
    that opens its transactions with ``BEGIN IMMEDIATE``, so a batch never fails
    half-way on a lock upgrade; readers never block it (WAL).
    """

    reader: AsyncEngine
    writer: AsyncEngine
    # SQLite only: the thread that writes the batches of sales.
    sqlite_writer: SQLiteWriter | None = None

    @property
    def dialect(self) -> str:
        return self.writer.dialect.name

    async def dispose(self) -> None:
        await self.reader.dispose()
        await self.writer.dispose()
        if self.sqlite_writer is not None:
            self.sqlite_writer.close()


def _sqlite_engine(url: str, *, immediate: bool, pool_size: int) -> AsyncEngine:
    engine = create_async_engine(url, pool_size=pool_size, max_overflow=0, pool_timeout=30)

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy emit BEGIN itself (pysqlite's own BEGIN is deferred).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        for pragma in _SQLITE_PRAGMAS:
            cursor.execute(pragma)
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: sa.Connection) -> None:
        if conn.get_execution_options().get("isolation_level") != "AUTOCOMMIT":
            conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine


def connect(settings: Settings) -> Database:
    url = settings.database_url
    if settings.is_sqlite:
        return Database(
            reader=_sqlite_engine(url, immediate=False, pool_size=settings.pool_size).execution_options(
                isolation_level="AUTOCOMMIT"
            ),
            writer=_sqlite_engine(url, immediate=True, pool_size=1),
            sqlite_writer=SQLiteWriter(sa.engine.make_url(url).database or ""),
        )
    engine = create_async_engine(
        url,
        pool_size=settings.pool_size,
        max_overflow=0,
        pool_timeout=5,
        pool_pre_ping=False,
        connect_args={"timeout": 5, "command_timeout": 30, "server_settings": {"synchronous_commit": "on"}},
    )
    return Database(reader=engine.execution_options(isolation_level="AUTOCOMMIT"), writer=engine)


@contextlib.asynccontextmanager
async def write_transaction(database: Database) -> AsyncIterator[AsyncConnection]:
    """A transaction for PostgreSQL's writer.

    The writer talks to asyncpg directly (see ``insert_sales``), so the
    transaction is asyncpg's own: SQLAlchemy would only send BEGIN before its
    own first statement. A connection found dead is dropped from the pool
    rather than handed out again.
    """
    async with database.writer.connect() as conn:
        raw = await _driver(conn)
        try:
            async with raw.transaction():
                yield conn
        except BaseException:
            if raw.is_closed():
                await conn.invalidate()
            raise


async def _driver(conn: AsyncConnection) -> Any:
    raw = (await conn.get_raw_connection()).driver_connection
    assert raw is not None
    return raw


def writer_slot() -> int:
    """A slot for a writer that holds none (see ``changes``)."""
    return os.getpid() % SLOTS


def upsert(conn: AsyncConnection, table: sa.Table) -> Any:
    """An ``INSERT`` of the dialect in use, which has ``on_conflict_do_*``."""
    module = postgresql if conn.dialect.name == "postgresql" else sqlite
    return module.insert(table)


# --- catalog -----------------------------------------------------------------


async def list_products(conn: AsyncConnection) -> Sequence[sa.Row[Any]]:
    result = await conn.execute(sa.select(products).order_by(products.c.id))
    return result.all()


async def list_stores(conn: AsyncConnection) -> Sequence[sa.Row[Any]]:
    result = await conn.execute(sa.select(stores).order_by(stores.c.id))
    return result.all()


async def get_version(conn: AsyncConnection, name: str) -> int:
    version = await conn.scalar(sa.select(versions.c.version).where(versions.c.name == name))
    return int(version or 0)


CHANNEL = "salesreport_changes"
VERSIONED = ("catalog", "keys")


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


# --- sales and rollups -------------------------------------------------------


_SALE_COLUMNS = ("id", "store_id", "product_id", "quantity", "unit_price", "amount", "sold_at", "idempotency_key")
_SQLITE_FIND = f"SELECT {', '.join(_SALE_COLUMNS)} FROM sales WHERE store_id = ? AND idempotency_key = ?"
_PG_FIND = f"""
SELECT {", ".join("s." + c for c in _SALE_COLUMNS)}
FROM sales s JOIN unnest($1::bigint[], $2::text[]) AS k(store_id, idempotency_key)
  ON s.store_id = k.store_id AND s.idempotency_key = k.idempotency_key
"""


async def find_sales_by_key(
    conn: AsyncConnection, keys: Iterable[tuple[int, str]]
) -> dict[tuple[int, str], dict[str, Any]]:
    """The stored sales with these (store, idempotency key) pairs, as dicts (PostgreSQL)."""
    keys = list(keys)
    raw = await _driver(conn)
    records = await raw.fetch(_PG_FIND, [k[0] for k in keys], [k[1] for k in keys])
    return {(r["store_id"], r["idempotency_key"]): dict(r) for r in records}


# --- the writer's batches -----------------------------------------------------
#
# A batch is written by a generator of steps (see ``ingestion``): it yields
# ("find", keys) or ("insert", rows) and receives the stored sales by key, or
# the new ids (None where the key was stored already). A driver runs the steps
# in one transaction: asynchronously on PostgreSQL, and on SQLite in the
# writer's own thread, so that a batch costs one hop to that thread, not one
# per statement.

Steps = Generator[tuple[str, Any], Any, Any]


async def run_batch(database: Database, steps: Steps, slot: int) -> Any:
    if database.sqlite_writer is not None:
        return await database.sqlite_writer.run(steps, slot)
    async with write_transaction(database) as conn:
        request = next(steps)
        while True:
            kind, argument = request
            if kind == "find":
                answer: Any = await find_sales_by_key(conn, argument)
            else:
                answer = await insert_sales(conn, argument, slot)
            try:
                request = steps.send(answer)
            except StopIteration as done:
                return done.value


async def insert_sales(conn: AsyncConnection, rows: Sequence[dict[str, Any]], slot: int) -> list[int | None]:
    """Insert priced sales, add them to the rollups, return their ids in the order given.

    Rows with an idempotency key go in key order, so two writers inserting the
    same keys wait on each other instead of deadlocking; rollup rows likewise.
    A row whose key is stored already (or by another writer meanwhile) is left
    out, and its id is None.
    """
    order = sorted(range(len(rows)), key=lambda i: _key_order(rows[i]))
    new_ids = await _insert_sales_pg(conn, [rows[i] for i in order], slot)
    return _unsort(order, new_ids)


def _unsort(order: list[int], values: list[int | None]) -> list[int | None]:
    result: list[int | None] = [None] * len(order)
    for i, value in zip(order, values, strict=True):
        result[i] = value
    return result


def aggregate(rows: Iterable[dict[str, Any]]) -> tuple[dict[Any, tuple[int, int]], dict[Any, int], dict[int, int]]:
    """Sum sales as the rollups hold them: revenue and count by (store, month),
    quantity by (product, month), and quantity by product."""
    store_revenue: dict[Any, tuple[int, int]] = {}
    product_quantity: dict[Any, int] = {}
    product_totals: dict[int, int] = {}
    for row in rows:
        key = (row["store_id"], row["month"])
        revenue, count = store_revenue.get(key, (0, 0))
        store_revenue[key] = (revenue + row["amount"], count + 1)
        pkey = (row["product_id"], row["month"])
        product_quantity[pkey] = product_quantity.get(pkey, 0) + row["quantity"]
        product_totals[row["product_id"]] = product_totals.get(row["product_id"], 0) + row["quantity"]
    return store_revenue, product_quantity, product_totals


# PostgreSQL's fast path: the sales and the three rollups in one statement and
# one round trip, fed by arrays (measured in BENCHMARKS.md). Sequence values
# follow the ORDER BY of the SELECT, so ids sorted ascending are in row order.
_PG_INSERT = """
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


async def _insert_sales_pg(conn: AsyncConnection, rows: Sequence[dict[str, Any]], slot: int) -> list[int | None]:
    raw = await _driver(conn)
    arrays = [[row[c] for row in rows] for c in _INSERT_COLUMNS if c != "amount"]  # amount: computed in SQL
    records = await raw.fetch(_PG_INSERT, *arrays, list(range(len(rows))), slot)
    # Ids ascend in row order; rows whose key was taken are missing.
    kept = {(r["store_id"], r["idempotency_key"]) for r in records if r["idempotency_key"] is not None}
    ids = iter(r["id"] for r in records)
    return [
        next(ids) if row["idempotency_key"] is None or (row["store_id"], row["idempotency_key"]) in kept else None
        for row in rows
    ]


def _key_order(row: dict[str, Any]) -> tuple[int, str]:
    key = row["idempotency_key"]
    return (row["store_id"], key) if key is not None else (0, "")


async def insert_sales_bulk(conn: AsyncConnection, rows: Sequence[dict[str, Any]]) -> None:
    """Insert sales without reading anything back (history loads)."""
    if conn.dialect.name == "postgresql":
        # COPY is several times faster than INSERT for millions of rows.
        raw = await _driver(conn)
        columns = [c.name for c in sales.columns if c.name != "id"]
        records = [tuple(row[c] for c in columns) for row in rows]
        await raw.copy_records_to_table("sales", records=records, columns=columns)
    else:
        await conn.execute(sa.insert(sales), list(rows))


async def add_to_rollups(
    conn: AsyncConnection,
    slot: int,
    store_revenue: dict[Any, tuple[int, int]],
    product_quantity: dict[Any, int],
    product_totals: dict[int, int],
) -> None:
    """Add one batch's aggregates into the rollups.

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
