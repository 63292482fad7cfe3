"""``python -m salesreport``: migrate, import, retire, demo, check, archive, backup, keys, serve.

``schema`` migrate · ``data`` import, retire, demo, check · ``operations``
archive, backup, keys, serve · ``runner`` how a command works on the database.
Here: the parser, the types of its values, and ``main``.
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
from collections.abc import Callable
from datetime import UTC, datetime

import sqlalchemy as sa

from .. import auth, config, db
from ..schemas import MAX_ID, parse_month
from .data import _check, _demo, _import, _retire
from .operations import _archive, _backup, _keys, _serve
from .schema import _migrate

Command = Callable[[argparse.Namespace, config.Settings], int]


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
    dem.add_argument("--sales", type=_bounded(0, 100_000_000), default=50_000, help="number of sales (default 50000)")
    dem.add_argument("--stores", type=_bounded(1, 100_000), default=50, help="number of stores (default 50)")
    dem.add_argument("--products", type=_bounded(1, 100_000), default=500, help="number of products (default 500)")
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
    create.add_argument("--store", type=_bounded(1, MAX_ID), help="the store a pos key may post for")
    keys_sub.add_parser("list", help="one line per key: id role store created last-used [revoked]")
    revoke = keys_sub.add_parser("revoke", help="revoke a key at once, on every worker")
    revoke.add_argument("id", type=_bounded(1, MAX_ID))
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
    except sa.exc.DBAPIError as exc:
        # The database refused the command (no such database or role, a wrong password, a file it cannot
        # open, a row a migration cannot take): in its own words, without a traceback.
        where = config.hidden(settings.database_url)
        print(f"{args.command}: the database at {where} refused: {exc.orig}", file=sys.stderr)
        return 1
    except (OSError, sqlite3.Error) as exc:
        # A file that cannot be written or read (a full disk, a missing directory), a database that cannot
        # be reached (refused, timed out, no such host): say so, without a traceback.
        unreachable = isinstance(exc, ConnectionError | TimeoutError)
        if isinstance(exc, OSError) and getattr(exc, "errno", None) is None and not unreachable:
            raise
        print(f"{args.command}: {exc or type(exc).__name__}", file=sys.stderr)
        return 1
