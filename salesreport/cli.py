"""``python -m salesreport``: migrate, import, demo, check, archive, backup, keys, serve."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sqlite3
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from . import archive, auth, catalog, config, db, demo, metrics, reports, server
from .changes import SERVING, serving
from .db import partitions
from .health import head_revision
from .ingestion import store_history
from .schemas import MAX_ID, format_month, parse_month

Command = Callable[[argparse.Namespace, config.Settings], int]


def _migrate(args: argparse.Namespace, settings: config.Settings) -> int:
    from alembic import command
    from alembic.config import Config

    if not args.while_serving:
        workers = _workers_serving(settings)
        if workers:
            print(
                f"migrate: {workers} workers of this service are connected to the database (seen within the last "
                f"{SERVING.total_seconds():g} s). Code older than the "
                "new schema cannot write to it (its sales would be refused): stop the service, migrate, then start "
                "the new version. --while-serving migrates anyway.",
                file=sys.stderr,
            )
            return 1
    cfg = Config()
    cfg.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
    cfg.set_main_option("sqlalchemy.url", settings.database_url.replace("%", "%%"))
    command.upgrade(cfg, "head")
    print("schema is up to date")

    async def months_ahead(database: db.Database) -> int:
        async with database.writer.begin() as conn:
            if await partitions.partitioned(conn):
                made = await partitions.ensure_around(conn, datetime.now(UTC))
                if made:
                    print(f"partitions made: {', '.join(partitions.name(m) for m in made)}")
        return 0

    return _run(months_ahead, settings)


def _workers_serving(settings: config.Settings) -> int:
    """How many workers serve this PostgreSQL database while its schema is behind this code's (each
    records itself as serving: see ``changes``); 0 on SQLite, which cannot tell."""
    if settings.is_sqlite:
        return 0

    async def count(database: db.Database) -> int:
        async with database.reader.connect() as conn:
            if await db.schema_revision(conn) in (None, head_revision()):
                return 0
            has_workers = await conn.run_sync(lambda sync: sa.inspect(sync).has_table("workers"))
            return len(await serving(conn)) if has_workers else 0

    return _run(count, settings)


def _run(coro: Callable[[db.Database], Awaitable[int]], settings: config.Settings) -> int:
    async def main() -> int:
        database = db.connect(settings, command_timeout=None)  # a command works on whole tables
        try:
            return await coro(database)
        finally:
            await database.dispose()

    return asyncio.run(main())


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
    """Sales of these products already recorded and dated at or after ``effective`` (a back-dated change)."""
    if not product_ids:
        return 0
    s = db.sales
    query = sa.select(sa.func.count()).where(s.c.product_id.in_(product_ids), s.c.sold_at >= effective)
    return int(await conn.scalar(query) or 0)


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


def _instant(text: str) -> datetime:
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an RFC 3339 instant: {text!r}") from None
    if value.utcoffset() is None:
        example = value.replace(tzinfo=UTC).isoformat().replace("+00:00", "")
        raise argparse.ArgumentTypeError(f"give the instant with its offset, e.g. {example}+03:00 or {example}Z")
    if value <= db.BEGINNING:
        raise argparse.ArgumentTypeError(f"must be after {db.BEGINNING.isoformat()}")
    return value.astimezone(UTC)


def _demo(args: argparse.Namespace, settings: config.Settings) -> int:
    async def fill(database: db.Database) -> int:
        async with database.reader.connect() as conn:
            existing = await conn.scalar(sa.select(sa.func.count()).select_from(db.products))
        if existing:
            print("the database already has a catalog; demo data not loaded")
            return 0
        store_rows, product_rows = demo.stores(args.stores), demo.products(args.products)
        async with database.writer.begin() as conn:
            await db.save_catalog(conn, product_rows, store_rows, effective=datetime.now(UTC))
        started = time.perf_counter()
        chunk: list[dict[str, Any]] = []
        done = 0
        for row in demo.sales(store_rows, product_rows, args.sales, now=datetime.now(UTC)):
            chunk.append(row)
            if len(chunk) == 50_000:
                async with database.writer.begin() as conn:
                    await store_history(conn, chunk)
                done += len(chunk)
                chunk = []
                print(f"  {done} sales…", file=sys.stderr)
        if chunk:
            async with database.writer.begin() as conn:
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


def _archive(args: argparse.Namespace, settings: config.Settings) -> int:
    now = datetime.now(UTC)
    if args.before > partitions.utc_month(now):
        print(f"archive: --before {format_month(args.before)} is after this month", file=sys.stderr)
        return 2
    directory = Path(args.to)
    directory.mkdir(parents=True, exist_ok=True)

    async def run(database: db.Database) -> int:
        async with database.reader.connect() as conn:
            months = await archive.months_to_archive(conn, args.before)
        total = 0
        for month in months:
            try:
                async with database.writer.begin() as conn:
                    done = await archive.archive_month(conn, month, directory, now, settings.key_lifetime)
            except (archive.Recent, archive.Busy) as exc:
                print(f"archive: {exc}; {total} months archived", file=sys.stderr)
                return 1
            if done is None:
                continue
            total += 1
            print(
                f"archived {format_month(done.month)}: {done.sales} sales, {done.returns} returns "
                f"({', '.join(str(f) for f in done.files)})"
            )
        print(f"{total} months archived before {format_month(args.before)}")
        return 0

    return _run(run, settings)


def _backup(args: argparse.Namespace, settings: config.Settings) -> int:
    if not settings.is_sqlite:
        print(
            "backup: for PostgreSQL use pg_dump (or pg_basebackup for the whole cluster): see README, Backups",
            file=sys.stderr,
        )
        return 2
    source = sa.engine.make_url(settings.database_url).database or ""
    target = Path(args.file)
    partial = target.with_name(target.name + ".partial")
    partial.unlink(missing_ok=True)
    # The online backup API copies one consistent snapshot, however the service writes meanwhile
    # (in one step: a step-wise copy would start again after each write).
    with contextlib.closing(sqlite3.connect(source)) as src, contextlib.closing(sqlite3.connect(partial)) as dst:
        src.backup(dst)
    os.replace(partial, target)
    print(f"backed up {source} to {target}")
    return 0


def _keys(args: argparse.Namespace, settings: config.Settings) -> int:
    async def manage(database: db.Database) -> int:
        if args.keys_command == "create":
            if (args.role == "pos") != (args.store is not None):
                print("keys create: a pos key needs --store ID; an owner or metrics key takes none", file=sys.stderr)
                return 2
            async with database.writer.begin() as conn:
                if args.store is not None:
                    found = await conn.scalar(sa.select(db.stores.c.id).where(db.stores.c.id == args.store))
                    if found is None:
                        print(f"keys create: no store {args.store}", file=sys.stderr)
                        return 1
                key_id, key = await auth.create_key(conn, args.role, args.store)
            store = f" for store {args.store}" if args.store is not None else ""
            print(f"created key {key_id}: {args.role}{store}. It is shown once, here; keep it secret:")
            print(key)
            return 0
        if args.keys_command == "revoke":
            async with database.writer.begin() as conn:
                revoked = await auth.revoke_key(conn, args.id)
            print(
                f"revoked key {args.id}" if revoked else f"no active key {args.id}",
                file=sys.stdout if revoked else sys.stderr,
            )
            return 0 if revoked else 1
        async with database.reader.connect() as conn:
            rows = await auth.list_keys(conn)
        for r in rows:
            used = r.last_used_at.isoformat(timespec="seconds") if r.last_used_at else "never"
            status = f" revoked {r.revoked_at.isoformat(timespec='seconds')}" if r.revoked_at else ""
            store = r.store_id if r.store_id is not None else "-"
            print(f"{r.id} {r.role} {store} {r.created_at.isoformat(timespec='seconds')} {used}{status}")
        return 0

    return _run(manage, settings)


def _any_key(settings: config.Settings) -> int:
    async def count(database: db.Database) -> int:
        async with database.reader.connect() as conn:
            return int(await conn.scalar(sa.select(sa.func.count()).select_from(db.api_keys)) or 0)

    return _run(count, settings)


def _serve(args: argparse.Namespace, settings: config.Settings) -> int:
    try:
        tls = server.tls_files(args.tls_cert, args.tls_key)
    except server.ServeError as exc:
        print(exc, file=sys.stderr)
        return 2
    if not auth.is_loopback(args.host) and _any_key(settings) == 0:
        print(
            f"refusing to serve on {args.host}: no API key exists, so anyone could post sales and read revenue.\n"
            "Create keys first (python -m salesreport keys create --role owner, "
            "keys create --role pos --store ID), or serve on 127.0.0.1.",
            file=sys.stderr,
        )
        return 2
    address, taken = server.bind_address(args.host, args.port)
    if taken:
        print(f"cannot serve on {args.host}:{args.port}: {taken}", file=sys.stderr)
        return 2
    workers = args.workers
    if settings.is_sqlite and workers > 1:
        print("SQLite has one writer: serving with 1 worker (use PostgreSQL for more)", file=sys.stderr)
        workers = 1
    with metrics.shared_directory():
        server.granian(address, args.port, workers, tls)
    return 0


def _month(text: str) -> int:
    try:
        return parse_month(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _bounded(low: int, high: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be between {low} and {high}, got {value}")
        return value

    return parse


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m salesreport", description="The retail chain's sales service.")
    sub = p.add_subparsers(dest="command", required=True)
    mig = sub.add_parser(
        "migrate",
        help="create or upgrade the schema (stop the service first: old code cannot write a newer schema)",
    )
    mig.add_argument(
        "--while-serving", action="store_true", help="upgrade even though workers are connected (PostgreSQL)"
    )
    mig.set_defaults(func=_migrate)
    imp = sub.add_parser(
        "import",
        help="load or update products and stores from CSV",
        description="Insert or update products and stores; either file alone may list only what changes. "
        "A known product whose price differs from the one in force at --effective gets a new price from then on; "
        "past prices are never rewritten. A new product's price is in force from the beginning.",
    )
    imp.add_argument("--products", metavar="FILE.csv", help="columns id,name,price[,retired]")
    imp.add_argument("--stores", metavar="FILE.csv", help="columns id,address,timezone[,retired]")
    imp.add_argument(
        "--effective",
        type=_instant,
        metavar="INSTANT",
        help="when the new prices take effect, with an offset: 2026-12-01T00:00:00+03:00 (default: now); "
        "may lie in the past",
    )
    imp.set_defaults(func=_import)
    ret = sub.add_parser(
        "retire",
        help="retire products or stores: no longer sold to, listed only with ?include_retired=true; "
        "their history stays in every report",
    )
    ret.add_argument(
        "--product", type=_bounded(1, MAX_ID), action="append", metavar="ID", help="a product (repeatable)"
    )
    ret.add_argument("--store", type=_bounded(1, MAX_ID), action="append", metavar="ID", help="a store (repeatable)")
    ret.add_argument("--undo", action="store_true", help="bring them back instead")
    ret.set_defaults(func=_retire)
    dem = sub.add_parser("demo", help="fill an empty database with a demo chain")
    dem.add_argument("--sales", type=int, default=50_000, help="number of sales (default 50000)")
    dem.add_argument("--stores", type=int, default=50)
    dem.add_argument("--products", type=int, default=500)
    dem.set_defaults(func=_demo)
    chk = sub.add_parser("check", help="compare the report rollups with the raw sales")
    chk.add_argument("--repair", action="store_true", help="rebuild the rollups from the raw sales")
    chk.set_defaults(func=_check)
    arc = sub.add_parser(
        "archive",
        help="move the raw sales of old months to gzip CSV files (rollups and reports stay)",
        description="For each month before --before (the stores' local months, as in the reports), oldest first: "
        "write its sales and their returns to DIR as gzip CSV with a .sha256 file, keep what they added to the "
        "rollups, and remove them (PostgreSQL: detach and drop the month's partition). One transaction per month.",
    )
    arc.add_argument("--before", type=_month, required=True, metavar="YYYY-MM", help="the first month kept")
    arc.add_argument("--to", required=True, metavar="DIR", help="where the files go (created if missing)")
    arc.set_defaults(func=_archive)
    bak = sub.add_parser("backup", help="copy the SQLite database to FILE, consistent while serving")
    bak.add_argument("file", metavar="FILE")
    bak.set_defaults(func=_backup)
    keys = sub.add_parser("keys", help="create, list and revoke API keys")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    create = keys_sub.add_parser("create", help="create a key and print it once")
    create.add_argument(
        "--role", choices=auth.ROLES, required=True, help="owner: everything; pos: one store's tills; metrics: /metrics"
    )
    create.add_argument("--store", type=int, help="the store a pos key may post for")
    keys_sub.add_parser("list", help="one line per key: id role store created last-used [revoked]")
    revoke = keys_sub.add_parser("revoke", help="revoke a key at once, on every worker")
    revoke.add_argument("id", type=int)
    keys.set_defaults(func=_keys)
    srv = sub.add_parser("serve", help="run the HTTP service")
    srv.add_argument("--host", default="127.0.0.1")
    srv.add_argument("--port", type=_bounded(1, 65535), default=8000)
    srv.add_argument("--workers", type=_bounded(1, 256), default=1)
    srv.add_argument("--tls-cert", metavar="FILE", help="serve HTTPS with this PEM certificate; needs --tls-key")
    srv.add_argument("--tls-key", metavar="FILE", help="the certificate's private key (PEM, unencrypted)")
    srv.set_defaults(func=_serve)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    settings = config.load()
    func: Command = args.func
    try:
        return func(args, settings)
    except (OSError, sqlite3.Error) as exc:
        # A file that cannot be written or read (a full disk, a missing directory): say so, without a traceback.
        if isinstance(exc, OSError) and getattr(exc, "errno", None) is None:
            raise
        print(f"{args.command}: {exc}", file=sys.stderr)
        return 1
