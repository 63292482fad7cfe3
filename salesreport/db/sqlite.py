"""SQLite's writer: one connection, in one thread of its own.

Every batch runs there start to finish (``BEGIN IMMEDIATE`` to ``COMMIT``), so
the event loop hands it over once; with aiosqlite each statement would be a
round trip through a loop that is busy serving requests.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import sqlite3
from collections.abc import Collection, Sequence
from datetime import UTC, datetime
from typing import Any

from .batch import INSERT_COLUMNS, SALE_COLUMNS, BatchJob, Key, Row, key_order, unsort
from .engines import SQLITE_PRAGMAS
from .rollups import aggregate


class SQLiteWriter:
    def __init__(self, path: str) -> None:
        self._path = path
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-writer")
        self._conn: sqlite3.Connection | None = None

    async def write_batch(self, job: BatchJob, slot: int) -> Any:
        """Run ``job``'s steps (see ``batch``) in one transaction, in the writer's thread."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, self._write_batch, job, slot)

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
        conn = self._connection()
        try:
            conn.execute("BEGIN IMMEDIATE")
            keys = job.keys_to_find()
            stored = self._find(conn, keys, job.live_after) if keys else {}
            rows = job.plan(stored)
            ids = self._insert(conn, rows, slot) if rows else []
            lost = job.lost(ids)
            winners = self._find(conn, lost, job.live_after) if lost else {}
            result = job.resolve(ids, winners)
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
    def _find(conn: sqlite3.Connection, keys: Collection[Key], live_after: datetime) -> dict[Key, Row]:
        found = {}
        for key in keys:
            row = conn.execute(_FIND, key).fetchone()
            if row is None:
                continue
            sale = dict(zip(SALE_COLUMNS, row, strict=True))
            sale["sold_at"] = _from_text(sale["sold_at"])
            sale["received_at"] = _from_text(sale["received_at"])
            if sale["received_at"] < live_after:
                conn.execute(_EXPIRE, (sale["id"],))
                continue
            found[key] = sale
        return found

    @staticmethod
    def _insert(conn: sqlite3.Connection, rows: Sequence[Row], slot: int) -> list[int | None]:
        order = sorted(range(len(rows)), key=lambda i: key_order(rows[i]))
        new_ids: list[int | None] = []
        inserted = []
        for i in order:
            row = rows[i]
            values = [row[c] for c in INSERT_COLUMNS]
            values[5] = _to_text(row["sold_at"])
            values[6] = _to_text(row["received_at"])
            result = conn.execute(_INSERT, values).fetchone()
            new_ids.append(result[0] if result else None)
            if result:
                inserted.append(row)
        store_revenue, product_quantity, product_totals = aggregate(inserted)
        conn.executemany(_ADD_STORE, [(s, m, slot, r, n) for (s, m), (r, n) in sorted(store_revenue.items())])
        conn.executemany(_ADD_PRODUCT, [(p, m, slot, q) for (p, m), q in sorted(product_quantity.items())])
        conn.executemany(_ADD_TOTAL, [(p, slot, q) for p, q in sorted(product_totals.items())])
        return unsort(order, new_ids)


def _to_text(value: datetime) -> str:
    # The text form SQLAlchemy's SQLite DateTime reads and writes (UTC here).
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")


def _from_text(value: str) -> datetime:
    return datetime.fromisoformat(value).replace(tzinfo=UTC)


_FIND = f"SELECT {', '.join(SALE_COLUMNS)} FROM sales WHERE store_id = ? AND idempotency_key = ?"
_EXPIRE = "UPDATE sales SET idempotency_key = NULL WHERE id = ?"
_INSERT = f"""
INSERT INTO sales ({", ".join(INSERT_COLUMNS)}) VALUES ({", ".join("?" * len(INSERT_COLUMNS))})
ON CONFLICT (store_id, idempotency_key) DO NOTHING RETURNING id
"""
_ADD_STORE = """
INSERT INTO store_month (store_id, month, slot, revenue, sales) VALUES (?, ?, ?, ?, ?)
ON CONFLICT (store_id, month, slot)
DO UPDATE SET revenue = revenue + excluded.revenue, sales = sales + excluded.sales
"""
_ADD_PRODUCT = """
INSERT INTO product_month (product_id, month, slot, quantity) VALUES (?, ?, ?, ?)
ON CONFLICT (product_id, month, slot) DO UPDATE SET quantity = quantity + excluded.quantity
"""
_ADD_TOTAL = """
INSERT INTO product_total (product_id, slot, quantity) VALUES (?, ?, ?)
ON CONFLICT (product_id, slot) DO UPDATE SET quantity = quantity + excluded.quantity
"""
