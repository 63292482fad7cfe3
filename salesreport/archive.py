"""Archiving old months: their raw sales, and those sales' returns, to gzip CSV files, then out of the database.

Which sales: those of a month (``sales.month``, the store-local month the reports count them in)
before the one given (``archived``, the one rule). Each month goes, oldest first, in a transaction
of its own:

1. ``sales`` and ``returns`` are locked EXCLUSIVE (PostgreSQL; on SQLite the write transaction holds
   the database): reads and reports go on, writes wait until the month is done;
2. ``sales-YYYY-MM.csv.gz`` (the month's sales) and ``returns-YYYY-MM.csv.gz`` (every return of those
   sales, whenever it happened) are written, each with a header row, and ``YYYY-MM.sha256`` (the
   ``sha256sum -c`` format);
3. what those rows added to the rollups goes into ``archived_<rollup>``: the rollups keep it (the
   reports of archived months stay exact), and ``check`` adds it back to what the raw rows say;
4. the returns are deleted; on PostgreSQL the sales' keys are deleted and the month's partition is
   detached and dropped (O(1), whatever its size; sales of the month in the DEFAULT partition are
   deleted), on SQLite the sales are deleted;
5. the month is recorded in ``archived_months``.

A month is archived only once every idempotency key of its sales, and of their returns, has expired
(``SALESREPORT_KEY_LIFETIME_DAYS`` after the sale or the return was received; ``Recent`` otherwise): a
till's retry of a sale must find it, not store it anew, and a retry of a return must find the return,
not be refused as the return of a sale that is gone. The locks wait at most ``LOCK_TIMEOUT`` for another
transaction (a long writer; for the partition's detaching, a long reader such as ``pg_dump`` too, which
is why that lock is tried before the export), which would otherwise queue every request behind the
archive (``Busy``, and no file of the month is left). No file is ever written over (``Exists``).

A month archived again (a sale of it stored after it was archived) gets files of its own
(``sales-YYYY-MM-2.csv.gz``…). A return of an archived sale finds no sale (422).
"""

from __future__ import annotations

import contextlib
import csv
import gzip
import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from . import db, reports
from .db import partitions
from .ingestion.replay import is_live
from .schemas import format_month

_PAGE = 10_000
LOCK_TIMEOUT = "5s"


class Recent(Exception):
    """A sale of the month, or a return of one of its sales, was received so lately that its idempotency
    key still names it."""

    def __init__(self, month: int, live_until: datetime, what: str = "a sale") -> None:
        super().__init__(
            f"{format_month(month)} has {what} whose idempotency key lives until {live_until.isoformat()} "
            "(SALESREPORT_KEY_LIFETIME_DAYS after it was received): a retry of it must still find it, so the "
            "month can be archived from then on"
        )
        self.month, self.live_until = month, live_until


class Busy(Exception):
    """Another transaction held ``sales`` too long (a long writer, or for the detaching a reader such as
    pg_dump): try again later."""


class Exists(Exception):
    """A file the archive would write is there already: never written over (another database's archive
    of the month, or one whose database was restored from before it, or a run whose commit failed)."""

    def __init__(self, path: Path) -> None:
        super().__init__(
            f"{path} exists already (an archive of this month from another database, from before a restore, "
            "or from a run that failed as it committed): move it away, then run again"
        )


def archived(month: sa.ColumnElement[int] | int, before: int) -> Any:
    """Whether a sale of ``month`` is archived by ``archive --before`` ``before`` (both ``YYYYMM``)."""
    return month < before


@dataclass(frozen=True, slots=True)
class Archived:
    month: int
    sales: int
    returns: int
    files: tuple[Path, Path, Path]  # sales, returns, checksums


async def months_to_archive(conn: AsyncConnection, before: int) -> list[int]:
    """The months before ``before`` that have sales (on PostgreSQL also those with an empty partition)."""
    s = db.sales
    if await partitions.partitioned(conn):
        have = {m for m in await partitions.months_with_partitions(conn) if archived(m, before)}
        query = sa.text(f"SELECT DISTINCT month FROM {partitions.DEFAULT} WHERE month < :before")
        have |= set(await conn.scalars(query, {"before": before}))
        return sorted(have)
    return sorted(await conn.scalars(sa.select(s.c.month).distinct().where(archived(s.c.month, before))))


async def archive_month(
    conn: AsyncConnection, month: int, directory: Path, now: datetime, key_lifetime: timedelta
) -> Archived | None:
    """Archive one month in ``conn``'s transaction (see above) into ``directory`` (which exists); None
    if it had no sales (an empty partition, dropped). Raises ``Recent``, ``Busy`` or ``Exists``, or
    whatever else failed: the files this call wrote are removed again (the caller's transaction undoes
    the rest; if its commit then fails, they stay, and the next run refuses to write over them)."""
    written: list[Path] = []
    try:
        return await _archive_month(conn, month, directory, now, key_lifetime, written)
    except BaseException as exc:
        for path in written:  # rows that stay in the database are not also in an archive
            with contextlib.suppress(OSError):
                path.unlink()
        if isinstance(exc, sa.exc.DBAPIError) and db.sqlstate(exc) == "55P03":  # lock_not_available
            waited = " ".join((exc.statement or "").split()[:4])
            raise Busy(
                f"`{waited}` waited more than {LOCK_TIMEOUT} for another transaction (a long one, pg_dump, "
                "a VACUUM, the service's pruning of expired keys)"
            ) from None
        raise


async def _archive_month(
    conn: AsyncConnection, month: int, directory: Path, now: datetime, key_lifetime: timedelta, written: list[Path]
) -> Archived | None:
    s, r = db.sales, db.returns
    split = await partitions.partitioned(conn)
    if split:
        await conn.execute(sa.text(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'"))
        await conn.execute(sa.text("LOCK TABLE sales, returns IN EXCLUSIVE MODE"))
        # Detaching the partition at the end takes ACCESS EXCLUSIVE, which every reader of sales holds
        # off (pg_dump for the whole dump): tried now, and let go at once, so that a month that could
        # not be detached is refused before its export, not after it.
        await conn.execute(sa.text("SAVEPOINT detachable"))
        await conn.execute(sa.text("LOCK TABLE sales IN ACCESS EXCLUSIVE MODE"))
        await conn.execute(sa.text("ROLLBACK TO SAVEPOINT detachable"))
    of_month = s.c.month == month
    # Under the lock: a late sale of the month, stored meanwhile, is counted too.
    latest = await conn.scalar(
        sa.select(sa.func.max(s.c.received_at)).where(of_month, s.c.idempotency_key.is_not(None))
    )
    if latest is not None and is_live(latest, now, key_lifetime):
        raise Recent(month, latest + key_lifetime)
    returns_of_month = r.c.sale_id.in_(sa.select(s.c.id).where(of_month))
    # A return of one of its sales (made in any month) leaves with it: a retry of the return must find
    # it too, not be refused as the return of a sale that no longer exists.
    latest = await conn.scalar(
        sa.select(sa.func.max(r.c.received_at)).where(returns_of_month, r.c.idempotency_key.is_not(None))
    )
    if latest is not None and is_live(latest, now, key_lifetime):
        raise Recent(month, latest + key_lifetime, "a return of one of its sales")
    if not await conn.scalar(sa.select(sa.exists().where(of_month))):
        if split:
            await _drop_partition(conn, month)
        return None
    parts = int(await conn.scalar(sa.select(sa.func.count()).where(db.archived_months.c.month == month)) or 0)
    stem = format_month(month) + (f"-{parts + 1}" if parts else "")
    files = directory / f"sales-{stem}.csv.gz", directory / f"returns-{stem}.csv.gz", directory / f"{stem}.sha256"
    for path in files:
        if path.exists():
            raise Exists(path)
    sales_file, sales_count, sales_sha = await _export(conn, s, of_month, files[0])
    written.append(sales_file)
    returns_file, returns_count, returns_sha = await _export(conn, r, returns_of_month, files[1])
    written.append(returns_file)
    sums = files[2]
    _write(sums, lambda f: f.write(f"{sales_sha}  {sales_file.name}\n{returns_sha}  {returns_file.name}\n"))
    written.append(sums)
    _sync_directory(directory)  # the files are durable before their rows go
    await _keep_sums(conn, await reports.raw_sums(conn, of_month, returns_of_month))
    await conn.execute(sa.delete(r).where(returns_of_month))
    if split:
        await conn.execute(sa.delete(db.sale_keys).where(db.sale_keys.c.month == month))
        await conn.execute(sa.text(f"DELETE FROM {partitions.DEFAULT} WHERE month = :month"), {"month": month})
        await _drop_partition(conn, month)
    else:
        await conn.execute(sa.delete(s).where(of_month))
    await conn.execute(
        sa.insert(db.archived_months).values(
            month=month,
            part=parts + 1,
            sales=sales_count,
            returns=returns_count,
            sales_file=sales_file.name,
            sales_sha256=sales_sha,
            returns_file=returns_file.name,
            returns_sha256=returns_sha,
            archived_at=now,
        )
    )
    await db.bump_version(conn, db.DATA)
    return Archived(month, sales_count, returns_count, (sales_file, returns_file, sums))


async def archived_months(conn: AsyncConnection) -> list[int]:
    """The months archived so far, oldest first."""
    m = db.archived_months.c.month
    return list(await conn.scalars(sa.select(m).distinct().order_by(m)))


async def _drop_partition(conn: AsyncConnection, month: int) -> None:
    if month in await partitions.months_with_partitions(conn):
        # ACCESS EXCLUSIVE on sales for the moment: no data is moved.
        await conn.execute(sa.text(f"ALTER TABLE sales DETACH PARTITION {partitions.name(month)}"))
        await conn.execute(sa.text(f"DROP TABLE {partitions.name(month)}"))


async def _keep_sums(conn: AsyncConnection, sums: db.Rollups) -> None:
    """Add what the archived rows added to the rollups to ``archived_<rollup>``."""
    for name, table in db.ARCHIVED.items():
        keys, columns = db.ROLLUP_KEYS[name], db.ROLLUP_COLUMNS[name]
        records = [
            {**dict(zip(keys, key, strict=True)), **dict(zip(columns, values, strict=True))}
            for key, values in sorted(sums.tables[name].items())
        ]
        if records:
            stmt = db.upsert(conn, table)
            stmt = stmt.on_conflict_do_update(
                index_elements=list(keys), set_={c: table.c[c] + stmt.excluded[c] for c in columns}
            )
            await conn.execute(stmt, records)


async def _export(conn: AsyncConnection, table: sa.Table, where: Any, path: Path) -> tuple[Path, int, str]:
    """Write ``table``'s rows chosen by ``where`` to ``path`` as gzip CSV with a header row, in id
    order; the file, its rows, its SHA-256. Read a page at a time by id (a server-side cursor would
    hold the partition open, and the partition is dropped in the same transaction)."""
    count, last = 0, 0
    partial = path.with_name(path.name + ".partial")
    try:
        with gzip.open(partial, "wt", encoding="utf-8", newline="") as text:
            writer = csv.writer(text)
            writer.writerow([c.name for c in table.columns])
            while True:
                page = sa.select(table).where(where, table.c.id > last).order_by(table.c.id).limit(_PAGE)
                rows = (await conn.execute(page)).all()
                writer.writerows([_cell(v) for v in row] for row in rows)
                count += len(rows)
                if len(rows) < _PAGE:
                    break
                last = rows[-1].id
        _sync(partial)
    except BaseException:
        partial.unlink(missing_ok=True)  # a full disk leaves no half file behind
        raise
    os.replace(partial, path)
    return path, count, _sha256(path)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _cell(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime) else value


def _write(path: Path, fill: Callable[[Any], Any]) -> None:
    partial = path.with_name(path.name + ".partial")
    try:
        with partial.open("w", encoding="utf-8") as f:
            fill(f)
        _sync(partial)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    os.replace(partial, path)


def _sync(path: Path) -> None:
    with path.open("rb") as f:
        os.fsync(f.fileno())


def _sync_directory(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
