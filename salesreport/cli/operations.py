"""The operator's commands: ``archive`` old months, ``backup`` SQLite, manage API ``keys``, ``serve``."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sqlite3
import sys
from datetime import UTC, datetime
from pathlib import Path

import sqlalchemy as sa

from .. import archive, auth, config, db, metrics, server
from ..db import partitions
from ..schemas import format_month
from .runner import _run, missing_sqlite_file


def _archive(args: argparse.Namespace, settings: config.Settings) -> int:
    now = datetime.now(UTC)
    if args.before > partitions.utc_month(now):
        print(f"archive: --before {format_month(args.before)} is after this month", file=sys.stderr)
        return 2
    directory = Path(args.to)

    async def run(database: db.Database) -> int:
        async with database.reader.connect() as conn:
            months = await archive.months_to_archive(conn, args.before)
        try:  # once the database is known to have the schema: a refused command leaves nothing behind
            await asyncio.to_thread(directory.mkdir, parents=True, exist_ok=True)
        except OSError as exc:
            print(f"archive: cannot make the directory {directory}: {exc.strerror}", file=sys.stderr)
            return 1
        total = 0
        for month in months:
            try:
                async with database.writer.begin() as conn:
                    done = await archive.archive_month(conn, month, directory, now, settings.key_lifetime)
            except (archive.Recent, archive.Busy, archive.Exists) as exc:
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
    # sqlite3.connect() would create a missing database, and its empty copy would pass for a backup (a
    # DATABASE_URL relative to another working directory, as the default is, or misspelled).
    if not source or source == ":memory:" or not Path(source).is_file():
        print(f"backup: no SQLite database at {source!r} (DATABASE_URL={settings.database_url})", file=sys.stderr)
        return 1
    if target.exists() and target.resolve() == Path(source).resolve():
        print(f"backup: {target} is the database itself; give another file", file=sys.stderr)
        return 2
    if not target.name or target.is_dir():
        print(f"backup: {args.file!r} is a directory; give the copy's file name", file=sys.stderr)
        return 2
    partial = target.with_name(target.name + ".partial")
    partial.unlink(missing_ok=True)
    try:
        # The online backup API copies one consistent snapshot, however the service writes meanwhile
        # (in one step: a step-wise copy would start again after each write). mode=rw: never created.
        opened = sqlite3.connect(f"{Path(source).resolve().as_uri()}?mode=rw", uri=True)
        with contextlib.closing(opened) as src, contextlib.closing(sqlite3.connect(partial)) as dst:
            src.backup(dst)
        with partial.open("rb") as copy:
            os.fsync(copy.fileno())  # on disk before it takes the name of a backup
        os.replace(partial, target)
    except BaseException:
        partial.unlink(missing_ok=True)  # a full disk, an interruption: no half copy left beside the target
        raise
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
                    retired = await conn.scalar(sa.select(db.stores.c.retired).where(db.stores.c.id == args.store))
                    if retired is None:
                        print(f"keys create: no store {args.store}", file=sys.stderr)
                        return 1
                    if retired:  # made all the same: the store may be brought back
                        print(
                            f"keys create: store {args.store} is retired: its sales are refused until it is brought "
                            f"back (retire --store {args.store} --undo)",
                            file=sys.stderr,
                        )
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
    if missing_sqlite_file(settings):  # its workers would each create an empty database and serve it
        return 1
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
