"""The shape of one batch's transaction, shared by the two writers.

The ingestion side decides (which keys to look up, which rows to insert, what
each request is answered); a writer does the I/O, in this order, in one
transaction:

1. ``stored = find(job.keys_to_find())`` (skipped when there are none)
2. ``rows = job.plan(stored)``; ``ids = insert(rows)``: a row whose key is
   stored already is left out, and its id is None
3. ``winners = find(job.lost(ids))`` (skipped when none was left out)
4. ``return job.resolve(ids, winners)``: may raise to roll the batch back

``find`` only returns sales whose key is still alive (received at or after
``job.live_after``); an expired key is cleared from its old sale in the same
transaction, so that the key can be used again.

PostgreSQL's writer (``postgres.write_batch``) runs the steps on the event loop;
SQLite's (``sqlite.SQLiteWriter``) runs them in its own thread, so a batch costs
one hand-over to that thread, not one per statement.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from datetime import datetime
from typing import Any, Protocol

Key = tuple[int, str]  # (store_id, idempotency_key)
Row = dict[str, Any]

# A stored sale as ``find`` returns it.
SALE_COLUMNS = (
    "id",
    "store_id",
    "product_id",
    "quantity",
    "unit_price",
    "amount",
    "sold_at",
    "received_at",
    "idempotency_key",
    "catalog_price",
    "returned",
)
# A new sale as ``insert`` takes it.
INSERT_COLUMNS = (
    "store_id",
    "product_id",
    "quantity",
    "unit_price",
    "amount",
    "sold_at",
    "received_at",
    "month",
    "idempotency_key",
    "catalog_price",
)
# A stored return as ``find_returns`` returns it.
RETURN_COLUMNS = (
    "id",
    "sale_id",
    "store_id",
    "product_id",
    "quantity",
    "unit_price",
    "amount",
    "returned_at",
    "received_at",
    "idempotency_key",
)
# A new return as ``insert_returns`` takes it.
RETURN_INSERT_COLUMNS = (
    "sale_id",
    "store_id",
    "product_id",
    "quantity",
    "unit_price",
    "amount",
    "returned_at",
    "received_at",
    "month",
    "idempotency_key",
)


class BatchJob(Protocol):
    @property
    def live_after(self) -> datetime: ...

    def keys_to_find(self) -> Collection[Key]: ...

    def plan(self, stored: Mapping[Key, Row]) -> list[Row]: ...

    def lost(self, ids: Sequence[int | None]) -> Collection[Key]: ...

    def resolve(self, ids: Sequence[int | None], winners: Mapping[Key, Row]) -> Any: ...


class ReturnJob(Protocol):
    """A batch of returns, in one transaction:

    1. ``sales = lock_sales(job.sales_to_lock())``: read under a row lock
       (``FOR UPDATE``), so that concurrent returns of one sale queue here
    2. ``stored = find_returns(job.keys_to_find(sales))`` (replays; expired keys
       cleared; a key's store may be its sale's, so the sales come first)
    3. ``rows = job.plan(stored, sales)``; ``ids = insert_returns(rows)``, which
       also adds each row's units to its sale's ``returned`` and the refunds to
       the rollups; a row whose key was taken meanwhile is left out (id None)
    4. ``return job.resolve(ids)``: raises to roll back if a key was taken
    """

    @property
    def live_after(self) -> datetime: ...

    def sales_to_lock(self) -> Collection[int]: ...

    def keys_to_find(self, sales: Mapping[int, Row]) -> Collection[Key]: ...

    def plan(self, stored: Mapping[Key, Row], sales: Mapping[int, Row]) -> list[Row]: ...

    def resolve(self, ids: Sequence[int | None]) -> Any: ...


def key_order(row: Row) -> tuple[int, str]:
    """Rows go in key order, so two writers inserting the same keys wait on
    each other instead of deadlocking; rollup rows likewise."""
    key = row["idempotency_key"]
    return (row["store_id"], key) if key is not None else (0, "")


def unsort(order: list[int], values: Sequence[int | None]) -> list[int | None]:
    result: list[int | None] = [None] * len(order)
    for i, value in zip(order, values, strict=True):
        result[i] = value
    return result
