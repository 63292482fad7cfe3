"""PostgreSQL's monthly partitions of ``sales``, and the pruning of expired idempotency keys.

``sales`` is partitioned by ``month``: the store-local month (``YYYYMM``) the reports count the sale
in, so that a partition holds exactly the sales of one month of the reports, and archiving a month
(``archive``) detaches and drops one partition. Partitions are made ahead of time: ``migrate`` and
every worker (at start and daily, ``Upkeep``) keep the months from last month (UTC) to ``AHEAD``
months on. A sale of any other month (an offline backlog, back to 2000) goes to the DEFAULT
partition, ``sales_default``: no sale ever fails for lack of a partition.

A month is given its own partition only while the DEFAULT partition holds none of its sales (attaching
it would otherwise have to move them); such sales stay in ``sales_default``, and ``archive`` deletes
them from there.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

DEFAULT = "sales_default"
# Months made ahead of the current one: sales are dated at most 5 minutes ahead, so one would do;
# three leave a quarter for a worker that stops making them to be noticed.
AHEAD = 3
# Taken while partitions are made, so that workers starting together do not make the same one twice.
_LOCK = 0x5A1F


def name(month: int) -> str:
    """The partition of one month (``YYYYMM``)."""
    return f"sales_p{month}"


def add_months(month: int, count: int) -> int:
    year, m = divmod(month, 100)
    index = year * 12 + m - 1 + count
    return (index // 12) * 100 + index % 12 + 1


def utc_month(instant: datetime) -> int:
    utc = instant.astimezone(UTC)
    return utc.year * 100 + utc.month


def months_around(now: datetime) -> list[int]:
    """The months every store may be in now, and ``AHEAD`` more: a store's local month is at most
    one away from UTC's."""
    current = utc_month(now)
    return [add_months(current, i) for i in range(-1, AHEAD + 1)]


async def partitioned(conn: AsyncConnection) -> bool:
    """Whether ``sales`` is partitioned here (PostgreSQL from schema 0005 on)."""
    if conn.dialect.name != "postgresql":
        return False
    query = "SELECT relkind = 'p' FROM pg_class WHERE oid = 'sales'::regclass"
    return bool(await conn.scalar(sa.text(query)))


async def months_with_partitions(conn: AsyncConnection) -> set[int]:
    names = await conn.scalars(
        sa.text(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "WHERE i.inhparent = 'sales'::regclass"
        )
    )
    return {int(n.removeprefix("sales_p")) for n in names if n.startswith("sales_p")}


async def ensure(conn: AsyncConnection, months: Iterable[int]) -> list[int]:
    """Give each of ``months`` its partition if it has none; the months given one.

    A partition is made empty and then attached, which locks ``sales`` only in SHARE UPDATE
    EXCLUSIVE mode (inserts go on; ``CREATE TABLE … PARTITION OF`` would stop them for the moment)
    and scans the DEFAULT partition (sales of months without a partition: few) under its lock.
    """
    await conn.execute(sa.text("SELECT pg_advisory_xact_lock(:lock)"), {"lock": _LOCK})
    have = await months_with_partitions(conn)
    made = []
    for month in sorted(set(months) - have):
        end = add_months(month, 1)
        in_default = await conn.scalar(
            sa.text(f"SELECT EXISTS (SELECT FROM {DEFAULT} WHERE month >= :month AND month < :end)"),
            {"month": month, "end": end},
        )
        if in_default:
            continue
        table = name(month)
        await conn.execute(sa.text(f"CREATE TABLE {table} (LIKE sales INCLUDING DEFAULTS INCLUDING CONSTRAINTS)"))
        await conn.execute(sa.text(f"ALTER TABLE sales ATTACH PARTITION {table} FOR VALUES FROM ({month}) TO ({end})"))
        made.append(month)
    return made


async def ensure_around(conn: AsyncConnection, now: datetime) -> list[int]:
    """The partitions of the months around ``now`` (see ``months_around``)."""
    return await ensure(conn, months_around(now))


async def prune_keys(conn: AsyncConnection, live_after: datetime) -> int:
    """Delete the keys of sales received before ``live_after`` (expired: they no longer name a sale)."""
    result = await conn.execute(sa.text("DELETE FROM sale_keys WHERE received_at < :t"), {"t": live_after})
    return int(result.rowcount or 0)
