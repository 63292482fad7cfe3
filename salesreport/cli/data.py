"""Commands on the data: ``import`` and ``retire`` (the catalog), ``demo`` (a demo chain), ``check`` (the rollups)."""

from __future__ import annotations

import argparse
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from .. import archive, catalog, config, db, demo, reports
from ..db.catalog import chunks
from ..ingestion import store_history
from ..schemas import format_month
from .runner import _run


def _import(args: argparse.Namespace, settings: config.Settings) -> int:
    if not args.products and not args.stores:
        print("import: give --products FILE.csv, --stores FILE.csv, or both", file=sys.stderr)
        return 2
    effective = args.effective or datetime.now(UTC)
    problems: list[str] = []
    parsed: dict[str, list[dict[str, Any]]] = {"products": [], "stores": []}
    for name, path, columns in (
        ("products", args.products, catalog.PRODUCT_COLUMNS),
        ("stores", args.stores, catalog.STORE_COLUMNS),
    ):
        if path:
            try:
                parsed[name] = catalog.read_csv(Path(path), columns)
            except catalog.CatalogError as exc:
                problems += exc.problems
    if problems:
        print("\n".join(problems), file=sys.stderr)
        print("nothing was imported", file=sys.stderr)
        return 1

    async def save(database: db.Database) -> int:
        try:
            async with database.writer.begin() as conn:
                changed = await db.save_catalog(conn, parsed["products"], parsed["stores"], effective=effective)
                recorded = await _recorded_since(conn, changed, effective) if args.effective else 0
        except db.CatalogConflict as exc:
            print(f"{exc}\nnothing was imported", file=sys.stderr)
            return 1
        print(
            f"imported {len(parsed['products'])} products and {len(parsed['stores'])} stores; "
            f"{len(changed)} price changes from {effective.isoformat()}"
        )
        if recorded:
            print(
                f"note: {recorded} sales of these products dated from {effective.isoformat()} on were recorded "
                "before this change; they keep the prices they were recorded with (sales are never restated)",
                file=sys.stderr,
            )
        return 0

    return _run(save, settings)


async def _recorded_since(conn: Any, product_ids: list[int], effective: datetime) -> int:
    """Sales of these products already recorded that a change from ``effective`` would have priced (a
    back-dated change): dated at or after it, and before the product's next change after it, if any."""
    if not product_ids:
        return 0
    s, p = db.sales, db.prices
    later_change = sa.exists().where(
        p.c.product_id == s.c.product_id, p.c.effective_from > effective, p.c.effective_from <= s.c.sold_at
    )
    total = 0
    for chunk in chunks(product_ids):
        query = sa.select(sa.func.count()).where(
            s.c.product_id.in_(chunk), s.c.sold_at >= effective, sa.not_(later_change)
        )
        total += int(await conn.scalar(query) or 0)
    return total


def _retire(args: argparse.Namespace, settings: config.Settings) -> int:
    chosen = [(table, ids) for table, ids in ((db.products, args.product), (db.stores, args.store)) if ids]
    if not chosen:
        print("retire: give --product ID and/or --store ID (each repeatable)", file=sys.stderr)
        return 2

    async def mark(database: db.Database) -> int:
        missing: list[str] = []
        async with database.writer.begin() as conn:
            for table, ids in chosen:
                missing += [f"{table.name[:-1]} {i}" for i in await db.set_retired(conn, table, ids, not args.undo)]
            if missing:
                await conn.rollback()
        if missing:
            print(f"retire: no {', '.join(missing)}; nothing was changed", file=sys.stderr)
            return 1
        verb = "brought back" if args.undo else "retired"
        for table, ids in chosen:
            print(f"{verb} {len(ids)} {table.name if len(ids) > 1 else table.name[:-1]}: {', '.join(map(str, ids))}")
        return 0

    return _run(mark, settings)


def _demo(args: argparse.Namespace, settings: config.Settings) -> int:
    async def fill(database: db.Database) -> int:
        store_rows, product_rows = demo.stores(args.stores), demo.products(args.products)
        started = time.perf_counter()
        # One transaction: a run that fails or is interrupted leaves the database empty, to be filled by
        # the next run, not a catalog without its sales that the next run would take for a chain.
        async with database.writer.begin() as conn:
            if conn.dialect.name == "postgresql":
                await conn.execute(sa.text("LOCK TABLE products IN EXCLUSIVE MODE"))  # two runs: one fills
            if await conn.scalar(sa.select(sa.func.count()).select_from(db.products)):
                print("the database already has a catalog; demo data not loaded")
                return 0
            await db.save_catalog(conn, product_rows, store_rows, effective=datetime.now(UTC))
            chunk: list[dict[str, Any]] = []
            done = 0
            for row in demo.sales(store_rows, product_rows, args.sales, now=datetime.now(UTC)):
                chunk.append(row)
                if len(chunk) == 50_000:
                    await store_history(conn, chunk)
                    done += len(chunk)
                    chunk = []
                    print(f"  {done} sales…", file=sys.stderr)
            if chunk:
                await store_history(conn, chunk)
        elapsed = time.perf_counter() - started
        rate = args.sales / elapsed if elapsed else 0
        print(
            f"demo chain: {len(store_rows)} stores, {len(product_rows)} products, "
            f"{args.sales} sales ({elapsed:.1f} s, {rate:,.0f} sales/s)"
        )
        return 0

    return _run(fill, settings)


def _check(args: argparse.Namespace, settings: config.Settings) -> int:
    async def check(database: db.Database) -> int:
        if args.repair:
            async with database.writer.begin() as conn:
                if conn.dialect.name == "postgresql":
                    # Wait for in-flight batches, and hold new ones, while rebuilding.
                    # Sales first: every batch takes it first, so none can hold a lock this waits behind.
                    await conn.execute(
                        sa.text(
                            "LOCK TABLE sales, returns, store_month, product_month, product_total, store_product_month "
                            "IN EXCLUSIVE MODE"
                        )
                    )
                found = await reports.differences(conn)
                # Always rebuilt: that also folds every writer's slot into one row per key.
                await reports.rebuild(conn)
            for difference in found:
                print(difference)
            print(f"rebuilt the rollups; {len(found)} differences repaired")
            return 0
        async with database.reader.connect() as conn:
            # One snapshot for the rollups and the raw sales.
            level = "REPEATABLE READ" if conn.dialect.name == "postgresql" else "SERIALIZABLE"
            await conn.execution_options(isolation_level=level)
            async with conn.begin():
                found = await reports.differences(conn)
                gone = await archive.archived_months(conn)
        if gone:
            print(
                f"{len(gone)} months archived ({', '.join(map(format_month, gone))}): their sales are checked "
                "by the sums kept when they were archived"
            )
        for difference in found:
            print(difference)
        print(f"{len(found)} differences; run check --repair to rebuild" if found else "rollups equal the raw sales")
        return 1 if found else 0

    return _run(check, settings)
