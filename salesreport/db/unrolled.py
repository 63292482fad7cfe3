"""Lone sales not yet added to the rollups (PostgreSQL): the fold that adds them, and the rollups as
readers see them.

A batch of one sale (a lone till, when nothing else is waiting) is written by a statement that inserts
one row into ``unrolled_sales`` rather than updating four rollup rows and taking a slot's lock
(``postgres._INSERT_LONE``): its till waits for the sale, not for the reports. A moment later
(``FOLD_AFTER``) a fold moves every row there into the rollups, in one transaction, so the table stays
small. Readers never see a sale twice or not at all: every report on PostgreSQL reads ``LIVE``, each
rollup with what ``unrolled_sales`` still adds to it, in one statement (one snapshot), and the fold's
delete and its additions commit together; so does ``check``. A fold changes no figure, so it bumps no data counter; the sale's own
statement did.

Folds run one at a time per database (an advisory lock) and on any worker: what a stopped worker left
is folded by the next fold of any worker, or by ``upkeep`` at start. Batches of more sales add to the
rollups in their own statement, as do returns and SQLite's writer.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
import structlog

from .engines import writer_slot
from .postgres import add_sales, preference, slot_cte, write_transaction
from .schema import ROLLUP_COLUMNS, ROLLUP_KEYS, metadata, unrolled_sales

if TYPE_CHECKING:
    from .engines import Database

log = structlog.get_logger("salesreport.unrolled")

# A fold waits this long after the first sale it will take: a lone till at 1,000 sales a second is
# folded a hundred sales at a time.
FOLD_AFTER = 0.1
# After a failed fold (the database away): the rows wait, counted by every report meanwhile.
RETRY_AFTER = 1.0
# The advisory lock class of folds: one at a time, so that two never lock the same rows in turn.
FOLD_LOCK = 0x5A1F


async def fold(database: Database) -> int:
    """Move every row of ``unrolled_sales`` into the rollups; the number moved."""
    async with write_transaction(database) as raw:
        await raw.execute(f"SELECT pg_advisory_xact_lock({FOLD_LOCK})")
        moved: int = await raw.fetchval(_FOLD, preference(writer_slot(database)))
        return moved


_FOLD = f"""WITH moved AS (
    DELETE FROM unrolled_sales RETURNING store_id, product_id, month, quantity, amount, discount
), {slot_cte("$1")}, {add_sales("moved")}
SELECT count(*) FROM moved
"""


class Folder:
    """When to fold: ``due`` after each lone sale is written; a fold ``FOLD_AFTER`` later takes it
    with every other one written meanwhile. One fold at a time per process."""

    def __init__(self, fold: Callable[[], Awaitable[int]]) -> None:
        self._fold = fold
        self._timer: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[None] | None = None
        self._due = False  # a lone sale was written since the last fold began
        self._closed = False

    def due(self) -> None:
        if self._closed:
            return
        self._due = True
        running = self._task is not None and not self._task.done()
        if self._timer is None and not running:  # a running fold schedules the next itself
            self._timer = asyncio.get_running_loop().call_later(FOLD_AFTER, self._start)

    def _start(self) -> None:
        self._timer = None
        self._task = asyncio.create_task(self._run(), name="salesreport-fold")

    async def _run(self) -> None:
        self._due = False
        delay = FOLD_AFTER
        try:
            await self._fold()
        except Exception as exc:
            log.warning("lone sales not yet added to the rollups (the reports count them)", error=repr(exc))
            self._due, delay = True, RETRY_AFTER
        if self._due and not self._closed:
            self._timer = asyncio.get_running_loop().call_later(delay, self._start)

    async def close(self) -> None:
        """Fold what this process wrote, now; then no more."""
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._task is not None:
            await asyncio.wait([self._task])  # however it ends
        if self._due:
            try:
                await self._fold()
            except Exception as exc:
                log.warning("lone sales left to the next fold (the reports count them)", error=repr(exc))


def _live(name: str) -> sa.Subquery:
    """Rollup ``name`` as its rows, and after them what each row of ``unrolled_sales`` adds to it (a sale's
    sums, as ``rollups.Rollups.add_sale``)."""
    table = metadata.tables[name]
    u = unrolled_sales
    adds: dict[str, Any] = {
        "revenue": u.c.amount,
        "sales": sa.literal(1, sa.BigInteger),
        "refunds": sa.literal(0, sa.BigInteger),
        "discounts": u.c.discount,
        "quantity": u.c.quantity,
        "returned": sa.literal(0, sa.BigInteger),
    }
    keys, values = ROLLUP_KEYS[name], ROLLUP_COLUMNS[name]
    return sa.union_all(
        sa.select(*(table.c[c] for c in (*keys, *values))),
        sa.select(*(u.c[k] for k in keys), *(adds[v].label(v) for v in values)),
    ).subquery(name)


# What the reports read: each rollup with the lone sales not yet added to it.
LIVE = {name: _live(name) for name in ROLLUP_KEYS}
