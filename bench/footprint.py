"""What sales cost on disk and in WAL, for the capacity model in docs/SCALING.md.

On a migrated PostgreSQL database with a catalog imported, loads ``--sales``
sales through the bulk path (``store_history``, as ``bench/loader.py``), each
with a random UUID as its idempotency key (what POS systems are told to send),
alternating the rollup slot between chunks as ``--slots`` workers would; then
prints the WAL written, the size of every table and index, and the rollup rows
per month::

    createdb footprint
    export DATABASE_URL=postgresql://127.0.0.1:5432/footprint
    python -m salesreport migrate
    python -m salesreport import --products products.csv --stores stores.csv
    python bench/footprint.py --sales 1000000

``--report-only`` prints the sizes and rollup rows without loading anything
(for a database that the service itself filled).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from salesreport import config, db, demo  # noqa: E402
from salesreport.db.schema import ROLLUP_KEYS  # noqa: E402

CHUNK = 50_000
TABLES = ("sales", "returns", *ROLLUP_KEYS)

_CATALOG_STORES = "SELECT id, timezone FROM stores WHERE NOT retired ORDER BY id"
# The price in force now, per product (the generator prices every sale at it).
_CATALOG_PRODUCTS = """
SELECT DISTINCT ON (p.id) p.id, pr.price FROM products p JOIN prices pr ON pr.product_id = p.id
WHERE NOT p.retired AND pr.effective_from <= now() ORDER BY p.id, pr.effective_from DESC
"""
_WAL = "SELECT pg_current_wal_lsn()::text AS lsn, wal_records, wal_fpi, wal_bytes::bigint, wal_sync FROM pg_stat_wal"
_SIZES = """
SELECT pg_table_size(c.oid) AS heap, pg_indexes_size(c.oid) AS indexes, pg_total_relation_size(c.oid) AS total,
       (SELECT count(*) FROM pg_index i WHERE i.indrelid = c.oid) AS index_count
FROM pg_class c WHERE c.relname = :name AND c.relkind = 'r'
"""
_INDEXES = """
SELECT i.indexrelid::regclass::text AS name, pg_relation_size(i.indexrelid) AS bytes
FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid WHERE c.relname = :name ORDER BY 1
"""


async def fetch(conn: Any, sql: str, **params: Any) -> list[dict[str, Any]]:
    return [dict(r._mapping) for r in await conn.execute(sa.text(sql), params)]


async def load(database: db.Database, count: int, slots: int, seed: int) -> None:
    async with database.writer.connect() as conn:
        stores = await fetch(conn, _CATALOG_STORES)
        products = await fetch(conn, _CATALOG_PRODUCTS)
        before = (await fetch(conn, _WAL))[0]
        lsn_before = before["lsn"]
    started = time.perf_counter()
    chunk: list[dict[str, Any]] = []
    chunks = 0
    for row in demo.sales(stores, products, count, now=datetime.now(UTC), seed=seed):
        row["idempotency_key"] = str(uuid.uuid4())
        chunk.append(row)
        if len(chunk) == CHUNK:
            async with database.writer.begin() as conn:
                await db.store_history(conn, chunk, slot=chunks % slots)
            chunks += 1
            chunk = []
    if chunk:
        async with database.writer.begin() as conn:
            await db.store_history(conn, chunk, slot=chunks % slots)
    elapsed = time.perf_counter() - started
    # A backend flushes its WAL statistics when idle for a while or when it exits: close the loader's.
    await database.writer.dispose()
    await asyncio.sleep(0.5)
    async with database.writer.connect() as conn:
        after = (await fetch(conn, _WAL))[0]
        wal = await conn.execute(
            sa.text("SELECT pg_wal_lsn_diff(CAST(:a AS text)::pg_lsn, CAST(:b AS text)::pg_lsn)"),
            {"a": after["lsn"], "b": lsn_before},
        )
        wal_bytes = int(wal.scalar_one())
    print(f"loaded {count:,} sales in {elapsed:.1f} s ({count / elapsed:,.0f}/s), {slots} slot(s)")
    print(f"WAL (pg_current_wal_lsn difference): {wal_bytes:,} bytes, {wal_bytes / count:,.0f} per sale")
    print(
        "pg_stat_wal difference (whole cluster): "
        f"records {after['wal_records'] - before['wal_records']:,}, "
        f"full-page images {after['wal_fpi'] - before['wal_fpi']:,}, "
        f"bytes {after['wal_bytes'] - before['wal_bytes']:,}, syncs {after['wal_sync'] - before['wal_sync']:,}"
    )


async def report(database: db.Database) -> None:
    async with database.writer.connect() as conn:
        await conn.execute(sa.text("COMMIT"))  # VACUUM cannot run inside a transaction
        for name in TABLES:
            await conn.execute(sa.text(f"VACUUM ANALYZE {name}"))
        sales = (await conn.execute(sa.text("SELECT count(*) FROM sales"))).scalar_one()
        print(f"\nsales: {sales:,}\n")
        print("| table | rows | heap (bytes) | indexes (bytes) | total (bytes) | total per sale |")
        print("|---|---:|---:|---:|---:|---:|")
        for name in TABLES:
            rows = (await conn.execute(sa.text(f"SELECT count(*) FROM {name}"))).scalar_one()
            s = (await fetch(conn, _SIZES, name=name))[0]
            per_sale = s["total"] / sales if sales else 0
            print(f"| {name} | {rows:,} | {s['heap']:,} | {s['indexes']:,} | {s['total']:,} | {per_sale:,.1f} |")
        print("\n| index | bytes | per sale |")
        print("|---|---:|---:|")
        for name in ("sales", "returns"):
            for i in await fetch(conn, _INDEXES, name=name):
                print(f"| {i['name']} | {i['bytes']:,} | {i['bytes'] / sales if sales else 0:,.1f} |")
        print("\nRollup rows per month (slots in use; distinct keys):\n")
        print("| month | sales | store_month | product_month | store_product_month | slots | stores | products |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|")
        months = await fetch(
            conn,
            """
            SELECT s.month, s.n,
              (SELECT count(*) FROM store_month r WHERE r.month = s.month) AS sm,
              (SELECT count(*) FROM product_month r WHERE r.month = s.month) AS pm,
              (SELECT count(*) FROM store_product_month r WHERE r.month = s.month) AS spm,
              (SELECT count(DISTINCT slot) FROM store_month r WHERE r.month = s.month) AS slots,
              (SELECT count(DISTINCT store_id) FROM sales x WHERE x.month = s.month) AS stores,
              (SELECT count(DISTINCT product_id) FROM sales x WHERE x.month = s.month) AS products
            FROM (SELECT month, count(*) AS n FROM sales GROUP BY month) s ORDER BY s.month
            """,
        )
        for m in months:
            print(
                f"| {m['month']} | {m['n']:,} | {m['sm']:,} | {m['pm']:,} | {m['spm']:,} | {m['slots']} "
                f"| {m['stores']:,} | {m['products']:,} |"
            )
        pairs = await fetch(
            conn,
            "SELECT month, count(*) AS pairs FROM (SELECT DISTINCT month, store_id, product_id FROM sales) d "
            "GROUP BY month ORDER BY month",
        )
        print("\nDistinct (store, product) pairs sold per month: " + ", ".join(f"{p['pairs']:,}" for p in pairs))


async def main_async(args: argparse.Namespace) -> None:
    database = db.connect(config.load())
    try:
        if not args.report_only:
            await load(database, args.sales, args.slots, args.seed)
        await report(database)
    finally:
        await database.dispose()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sales", type=int, default=1_000_000, help="number of sales to load")
    p.add_argument("--slots", type=int, default=2, help="rollup slots to alternate between (writer processes)")
    p.add_argument("--seed", type=int, default=3)
    p.add_argument("--report-only", action="store_true", help="load nothing; print sizes and rollup rows")
    asyncio.run(main_async(p.parse_args()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
