"""SQLite's writer: one connection, in one thread of its own.

Every batch runs there start to finish (``BEGIN IMMEDIATE`` to ``COMMIT``), so
the event loop hands it over once; with aiosqlite each statement would be a
round trip through a loop that is busy serving requests.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import itertools
import sqlite3
from collections.abc import Collection, Iterator, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar

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
from .catalog import DATA
from .engines import SQLITE_PRAGMAS
from .rollups import Rollups, upsert_sql
from .schema import ROLLUP_COLUMNS

_T = TypeVar("_T")


class SQLiteWriter:
    def __init__(self, path: str) -> None:
        self._path = path
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-writer")
        self._conn: sqlite3.Connection | None = None

    async def write_batch(self, job: BatchJob, slot: int) -> Any:
        """Run ``job``'s steps (see ``batch``) in one transaction, in the writer's thread."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, self._write_batch, job, slot)

    async def write_returns(self, job: ReturnJob, slot: int) -> Any:
        """Run ``job``'s steps (see ``batch.ReturnJob``) in one transaction, in the writer's thread."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, self._write_returns, job, slot)

    async def probe(self) -> None:
        """Return once the writer's thread has run a write transaction (health checks)."""
        await asyncio.get_running_loop().run_in_executor(self._executor, self._probe)

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
            for pragma in SQLITE_PRAGMAS:
                self._conn.execute(pragma)
        return self._conn

    def _probe(self) -> None:
        try:
            conn = self._connection()
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("ROLLBACK")
        except sqlite3.OperationalError:
            self._reset()
            raise

    def _reset(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(sqlite3.Error):
                self._conn.close()
            self._conn = None

    def _write_batch(self, job: BatchJob, slot: int) -> Any:
        def steps(conn: sqlite3.Connection) -> Any:
            keys = job.keys_to_find()
            stored = _find(conn, "sales", SALE_COLUMNS, _EXPIRE, keys, job.live_after) if keys else {}
            rows = job.plan(stored)
            ids = self._insert(conn, rows, slot) if rows else []
            lost = job.lost(ids)
            winners = _find(conn, "sales", SALE_COLUMNS, _EXPIRE, lost, job.live_after) if lost else {}
            return job.resolve(ids, winners)

        return self._transaction(steps)

    def _write_returns(self, job: ReturnJob, slot: int) -> Any:
        def steps(conn: sqlite3.Connection) -> Any:
            sales = {}
            for sale_id in sorted(job.sales_to_lock()):  # BEGIN IMMEDIATE already holds the database
                row = conn.execute(_SALE, (sale_id,)).fetchone()
                if row is not None:
                    sales[sale_id] = _times(dict(zip(SALE_COLUMNS, row, strict=True)))
            keys = job.keys_to_find(sales)
            stored = _find(conn, "returns", RETURN_COLUMNS, _EXPIRE_RETURN, keys, job.live_after) if keys else {}
            rows = job.plan(stored, sales)
            ids = self._insert_returns(conn, rows, slot) if rows else []
            return job.resolve(ids)

        return self._transaction(steps)

    def _transaction(self, steps: Any) -> Any:
        conn = self._connection()
        try:
            conn.execute("BEGIN IMMEDIATE")
            result = steps(conn)
            conn.execute("COMMIT")
            return result
        except StopIteration as exc:
            # An asyncio future cannot carry StopIteration: it would never complete.
            raise RuntimeError("StopIteration in a batch") from exc
        except sqlite3.Error as exc:
            if not isinstance(exc, sqlite3.IntegrityError | sqlite3.DataError):
                # The connection itself may be at fault (an I/O error, closed): the next batch opens a new one.
                self._reset()
            raise
        finally:
            if self._conn is conn and conn.in_transaction:
                conn.execute("ROLLBACK")

    @staticmethod
    def _insert(conn: sqlite3.Connection, rows: Sequence[Row], slot: int) -> list[int | None]:
        ids, inserted = _insert_rows(conn, rows, "sales", INSERT_COLUMNS)
        _add(conn, Rollups().add_sales(inserted), slot)
        return ids

    @staticmethod
    def _insert_returns(conn: sqlite3.Connection, rows: Sequence[Row], slot: int) -> list[int | None]:
        ids, inserted = _insert_rows(conn, rows, "returns", RETURN_INSERT_COLUMNS)
        conn.executemany(_ADD_RETURNED, [(row["quantity"], row["sale_id"]) for row in inserted])
        _add(conn, Rollups().add_returns(inserted), slot)
        return ids


def _insert_rows(
    conn: sqlite3.Connection, rows: Sequence[Row], table: str, columns: Sequence[str]
) -> tuple[list[int | None], list[Row]]:
    """Insert rows in key order; their ids in the order given (None where the key was taken), and
    the rows inserted.

    A few multi-row statements instead of one per row. RETURNING names no order, so each id is
    matched to its row by the key returned with it; keyless rows never conflict, and as ids
    ascend in the order of insertion, theirs are matched in that order."""
    order = sorted(range(len(rows)), key=lambda i: key_order(rows[i]))
    texts: dict[datetime, str] = {}  # a batch's rows mostly share their instants
    values = [_sql_values(rows[i], columns, texts) for i in order]
    returned: list[tuple[int, int, str | None]] = []
    for chunk in _chunks(values):
        sql = _values_sql(f"INSERT INTO {table} ({', '.join(columns)})", len(columns), len(chunk), _INSERT_TAIL)
        returned += conn.execute(sql, list(itertools.chain.from_iterable(chunk))).fetchall()
    by_key = {(store_id, key): id_ for id_, store_id, key in returned if key is not None}
    keyless = iter(sorted(id_ for id_, _, key in returned if key is None))
    new_ids: list[int | None] = []
    inserted = []
    for i in order:
        row = rows[i]
        key = row["idempotency_key"]
        # pop: of two rows with one key, the first took it and the second was left out.
        new_id = next(keyless) if key is None else by_key.pop((row["store_id"], key), None)
        new_ids.append(new_id)
        if new_id is not None:
            inserted.append(row)
    return unsort(order, new_ids), inserted


def _sql_values(row: Row, columns: Sequence[str], texts: dict[datetime, str]) -> list[Any]:
    values = []
    for c in columns:
        value = row[c]
        if isinstance(value, datetime):
            text = texts.get(value)
            if text is None:
                text = texts[value] = _to_text(value)
            value = text
        values.append(value)
    return values


def _add(conn: sqlite3.Connection, rollups: Rollups, slot: int) -> None:
    changed = False
    for table in ROLLUP_COLUMNS:
        for chunk in _chunks(rollups.rows(table, slot)):
            conn.execute(upsert_sql(table, len(chunk)), list(itertools.chain.from_iterable(chunk)))
            changed = True
    if changed:
        conn.execute(_BUMP_DATA, (f"{DATA}:{slot}",))


def _find(
    conn: sqlite3.Connection,
    table: str,
    columns: Sequence[str],
    expire: str,
    keys: Collection[Key],
    live_after: datetime,
) -> dict[Key, Row]:
    """The stored rows with these (store, key) whose key is alive; expired keys are cleared."""
    found = {}
    for chunk in _chunks(list(keys)):
        # CROSS JOIN: SQLite then loops over the keys and looks each up in the unique index (as a
        # row-value IN over VALUES, the planner would scan the index).
        select = f"SELECT {', '.join('s.' + c for c in columns)} FROM ("
        sql = _values_sql(select, 2, len(chunk), _FIND_TAIL.format(table=table))
        for row in conn.execute(sql, list(itertools.chain.from_iterable(chunk))).fetchall():
            stored = _times(dict(zip(columns, row, strict=True)))
            if stored["received_at"] < live_after:
                conn.execute(expire, (stored["id"],))
                continue
            found[(stored["store_id"], stored["idempotency_key"])] = stored
    return found


# Rows go in (and keys are looked up) by statements of a few sizes, powers of two up to this: each
# size is one statement, prepared once and kept in the connection's statement cache (128), whereas a
# statement per batch size would fill it. 256 rows of the widest insert (10 columns) stay far under
# SQLite's limit of 32,766 parameters.
_CHUNK = 256


def _chunks(items: Sequence[_T]) -> Iterator[Sequence[_T]]:
    """``items`` in order, in runs whose lengths are powers of two, at most ``_CHUNK``."""
    start = 0
    while start < len(items):
        size = min(_CHUNK, 1 << ((len(items) - start).bit_length() - 1))
        yield items[start : start + size]
        start += size


@functools.cache
def _values_sql(head: str, width: int, count: int, tail: str) -> str:
    """``head VALUES (?, ...), ... tail``: ``count`` rows of ``width`` parameters."""
    row = f"({', '.join('?' * width)})"
    return f"{head} VALUES {', '.join([row] * count)} {tail}"


def _times(row: Row) -> Row:
    for name in ("sold_at", "returned_at", "received_at"):
        if name in row:
            row[name] = _from_text(row[name])
    return row


def _to_text(value: datetime) -> str:
    # The text form SQLAlchemy's SQLite DateTime reads and writes (UTC here).
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")


def _from_text(value: str) -> datetime:
    return datetime.fromisoformat(value).replace(tzinfo=UTC)


_INSERT_TAIL = "ON CONFLICT (store_id, idempotency_key) DO NOTHING RETURNING id, store_id, idempotency_key"
_FIND_TAIL = ") AS k CROSS JOIN {table} AS s ON s.store_id = k.column1 AND s.idempotency_key = k.column2"
_EXPIRE = "UPDATE sales SET idempotency_key = NULL WHERE id = ?"
_SALE = f"SELECT {', '.join(SALE_COLUMNS)} FROM sales WHERE id = ?"
_EXPIRE_RETURN = "UPDATE returns SET idempotency_key = NULL WHERE id = ?"
_ADD_RETURNED = "UPDATE sales SET returned = returned + ? WHERE id = ?"
# The reports' data changed (see ``catalog.DATA``).
_BUMP_DATA = "INSERT INTO versions (name, version) VALUES (?, 1) ON CONFLICT (name) DO UPDATE SET version = version + 1"
