"""What a sale and a return add to the rollups, adding it, and the bulk path for history loads.

``Rollups`` is the one statement of the rule in Python (the SQLite writer, the
bulk path and ``check`` use it); PostgreSQL's writer states the same sums in
its SQL, and ``check`` and the differential tests hold the two to each other.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from . import partitions
from .catalog import DATA, bump_version
from .engines import driver_connection, upsert
from .schema import ROLLUP_COLUMNS, ROLLUP_KEYS, metadata, sales

Sums = dict[tuple[int, ...], list[int]]


@dataclass
class Rollups:
    """Sums by rollup table and key, in the order of ``schema.ROLLUP_COLUMNS``."""

    tables: dict[str, Sums] = field(default_factory=lambda: {name: {} for name in ROLLUP_COLUMNS})

    def add(self, table: str, key: tuple[int, ...], *values: int) -> None:
        sums = self.tables[table].get(key)
        if sums is None:
            self.tables[table][key] = list(values)
        else:
            for i, value in enumerate(values):
                sums[i] += value

    def add_sale(
        self, store_id: int, product_id: int, month: int, quantity: int, amount: int, discount: int, count: int = 1
    ) -> None:
        """A sale (or ``count`` sales summed) adds its amount to its store's net revenue,
        one to its count of sales, and what it was discounted by; its units and amount
        to its product."""
        self.add("store_month", (store_id, month), amount, count, 0, discount)
        self.add("product_month", (product_id, month), quantity, 0, amount)
        self.add("product_total", (product_id,), quantity, 0, amount)
        self.add("store_product_month", (store_id, product_id, month), quantity, 0, amount)

    def add_return(self, store_id: int, product_id: int, month: int, quantity: int, refund: int) -> None:
        """A return (or several summed) takes its refund off the net revenue of the store
        taking it back, in the month it happens, and its units and refund off its product
        (and off that product at that store)."""
        self.add("store_month", (store_id, month), -refund, 0, refund, 0)
        self.add("product_month", (product_id, month), -quantity, quantity, -refund)
        self.add("product_total", (product_id,), -quantity, quantity, -refund)
        self.add("store_product_month", (store_id, product_id, month), -quantity, quantity, -refund)

    def add_sales(self, rows: Iterable[dict[str, Any]]) -> Rollups:
        for r in rows:
            discount = (r["catalog_price"] - r["unit_price"]) * r["quantity"]
            self.add_sale(r["store_id"], r["product_id"], r["month"], r["quantity"], r["amount"], discount)
        return self

    def add_returns(self, rows: Iterable[dict[str, Any]]) -> Rollups:
        for r in rows:
            self.add_return(r["store_id"], r["product_id"], r["month"], r["quantity"], r["amount"])
        return self

    def records(self, table: str, slot: int) -> list[dict[str, Any]]:
        """One table's sums as rows for ``slot``, in key order (two writers then lock rows in
        the same order and cannot deadlock)."""
        keys, columns = ROLLUP_KEYS[table], ROLLUP_COLUMNS[table]
        return [
            {**dict(zip(keys, key, strict=True)), "slot": slot, **dict(zip(columns, sums, strict=True))}
            for key, sums in sorted(self.tables[table].items())
        ]

    def rows(self, table: str, slot: int) -> list[tuple[int, ...]]:
        """As ``records``, as tuples in the order of ``upsert_sql``'s columns."""
        return [(*key, slot, *sums) for key, sums in sorted(self.tables[table].items())]


@functools.cache
def upsert_sql(table: str, count: int = 1) -> str:
    """The SQLite statement adding ``count`` rows of sums into ``table``: positional parameters,
    each row its key, the slot and the sums (``Rollups.rows``)."""
    keys, columns = (*ROLLUP_KEYS[table], "slot"), ROLLUP_COLUMNS[table]
    names = (*keys, *columns)
    row = f"({', '.join('?' * len(names))})"
    return (
        f"INSERT INTO {table} ({', '.join(names)}) VALUES {', '.join([row] * count)} "
        f"ON CONFLICT ({', '.join(keys)}) DO UPDATE SET " + ", ".join(f"{c} = {c} + excluded.{c}" for c in columns)
    )


async def add_to_rollups(conn: AsyncConnection, slot: int, rollups: Rollups) -> None:
    """Add sums into the rollups (the bulk path; batches do it in their own SQL)."""
    for name, columns in ROLLUP_COLUMNS.items():
        records = rollups.records(name, slot)
        if not records:
            continue
        table = metadata.tables[name]
        stmt = upsert(conn, table)
        stmt = stmt.on_conflict_do_update(
            index_elements=[*ROLLUP_KEYS[name], "slot"],
            set_={c: table.c[c] + stmt.excluded[c] for c in columns},
        )
        await conn.execute(stmt, records)


async def insert_sales_bulk(conn: AsyncConnection, rows: Sequence[dict[str, Any]]) -> None:
    """Insert sales without reading anything back (history loads)."""
    columns = [c.name for c in sales.columns if c.name not in ("id", "returned")]
    if conn.dialect.name == "postgresql":
        # COPY is several times faster than INSERT for millions of rows. Ids are drawn first, so
        # that keyed sales get their rows in ``sale_keys`` too; months get their partitions.
        raw = await driver_connection(conn)
        await partitions.ensure(conn, {row["month"] for row in rows})
        ids = [r[0] for r in await raw.fetch("SELECT nextval('sales_id_seq') FROM generate_series(1, $1)", len(rows))]
        records = [(i, *(row[c] for c in columns)) for i, row in zip(ids, rows, strict=True)]
        await raw.copy_records_to_table("sales", records=records, columns=["id", *columns])
        keys = [
            (row["store_id"], row["idempotency_key"], i, row["month"], row["received_at"])
            for i, row in zip(ids, rows, strict=True)
            if row["idempotency_key"] is not None
        ]
        if keys:
            await raw.copy_records_to_table(
                "sale_keys", records=keys, columns=["store_id", "idempotency_key", "sale_id", "month", "received_at"]
            )
    else:
        await conn.execute(sa.insert(sales), [{c: row[c] for c in columns} for row in rows])


async def store_history(conn: AsyncConnection, rows: Sequence[dict[str, Any]], slot: int = 0) -> None:
    """The bulk path: insert already-priced sales and their rollups, no answers."""
    await insert_sales_bulk(conn, rows)
    await add_to_rollups(conn, slot, Rollups().add_sales(rows))
    await bump_version(conn, DATA)
