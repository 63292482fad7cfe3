"""Lone sales written before their rollups (PostgreSQL): counted by every report at once, folded once."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from salesreport import config, db, reports
from salesreport.db import unrolled
from salesreport.ingestion import Batcher
from salesreport.upkeep import Upkeep
from tests.conftest import NOW, eventually
from tests.test_ingestion import running_batcher, sale

pytestmark = pytest.mark.anyio
postgresql = pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
MONTH = NOW.year * 100 + NOW.month


@pytest.fixture
def no_fold(monkeypatch: pytest.MonkeyPatch) -> None:
    """Folds wait an hour: the lone sales stay in ``unrolled_sales`` until the test folds them."""
    monkeypatch.setattr(unrolled, "FOLD_AFTER", 3600.0)


@pytest.fixture
async def at_once(settings: config.Settings) -> AsyncIterator[Batcher]:
    """A batcher as ``serve`` runs it: no wait for company, so a lone request is a batch of one sale."""
    async with running_batcher(settings, flush_ms=0, queue_max_sales=100) as b:
        yield b


async def unrolled_count(settings: config.Settings) -> int:
    database = db.connect(settings)
    try:
        async with database.reader.connect() as conn:
            return int(await conn.scalar(sa.select(sa.func.count()).select_from(db.unrolled_sales)) or 0)
    finally:
        await database.dispose()


async def figures(settings: config.Settings) -> tuple[object, ...]:
    """Every report of the month and of all time, and what ``check`` finds wrong."""
    database = db.connect(settings)
    try:
        async with database.reader.connect() as conn:
            return (
                await reports.top_stores(conn, MONTH),
                await reports.top_products(conn, MONTH),
                await reports.top_products(conn, None),
                await reports.top_products(conn, MONTH, store_id=1),
                await reports.revenue_by_month(conn, MONTH),
                await reports.store_ranks(conn, MONTH),
                await reports.differences(conn),
            )
    finally:
        await database.dispose()


@postgresql
async def test_a_lone_sale_is_in_every_report_before_its_fold_and_after(
    no_fold: None, at_once: Batcher, settings: config.Settings
) -> None:
    await at_once.submit([sale(1, 1, quantity=3, idempotency_key="a")], False, NOW)
    await at_once.submit([sale(2, 1)], False, NOW)
    assert await unrolled_count(settings) == 2
    before = await figures(settings)
    top_stores, top_products, all_time, of_store, by_month, ranks, wrong = before
    assert [(s.id, s.revenue, s.discounts) for s in top_stores] == [(1, "45.80", "0.00")]  # type: ignore[attr-defined]
    assert [(p.id, p.quantity) for p in top_products] == [(1, 3), (2, 1)]  # type: ignore[attr-defined]
    assert [(p.id, p.quantity) for p in all_time] == [(1, 3), (2, 1)]  # type: ignore[attr-defined]
    assert [(p.id, p.quantity) for p in of_store] == [(1, 3), (2, 1)]  # type: ignore[attr-defined]
    assert [(m.revenue, m.sales) for m in by_month][-1] == ("45.80", 2)  # type: ignore[attr-defined]
    assert ranks == {1: 1}
    assert wrong == []

    assert await unrolled.fold(at_once.db) == 2
    assert await unrolled_count(settings) == 0
    assert await figures(settings) == before
    assert await unrolled.fold(at_once.db) == 0  # nothing left: nothing added twice


@postgresql
async def test_lone_sales_are_folded_soon_after(at_once: Batcher, settings: config.Settings) -> None:
    for product in (1, 2, 3, 1):
        await at_once.submit([sale(product, 2)], False, NOW)
    await eventually(lambda: _zero(settings), what="the sales are folded")
    *_, wrong = await figures(settings)
    assert wrong == []


async def _zero(settings: config.Settings) -> bool:
    return await unrolled_count(settings) == 0


@postgresql
async def test_a_batch_of_several_sales_adds_to_the_rollups_itself(
    no_fold: None, at_once: Batcher, settings: config.Settings
) -> None:
    await at_once.submit([sale(1, 1), sale(2, 2)], True, NOW)
    assert await unrolled_count(settings) == 0
    top_stores, *_, wrong = await figures(settings)
    assert [s.id for s in top_stores] == [2, 1]  # type: ignore[attr-defined]
    assert wrong == []


@postgresql
async def test_two_folds_at_once_move_each_sale_once(
    no_fold: None, at_once: Batcher, settings: config.Settings
) -> None:
    for store in (1, 2, 3, 4, 1, 2):
        await at_once.submit([sale(3, store)], False, NOW)
    before = await figures(settings)
    others = [db.connect(settings) for _ in range(3)]
    try:
        moved = await asyncio.gather(*(unrolled.fold(other) for other in others))
    finally:
        for other in others:
            await other.dispose()
    assert sorted(moved) == [0, 0, 6]
    assert await unrolled_count(settings) == 0
    assert await figures(settings) == before


@postgresql
async def test_a_process_folds_its_lone_sales_when_it_stops(no_fold: None, settings: config.Settings) -> None:
    async with running_batcher(settings, flush_ms=0, queue_max_sales=100) as b:
        await b.submit([sale(1, 1)], False, NOW)
        assert await unrolled_count(settings) == 1
    assert await unrolled_count(settings) == 0
    *_, wrong = await figures(settings)
    assert wrong == []


@postgresql
async def test_upkeep_folds_what_a_stopped_process_left(
    no_fold: None, settings: config.Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with running_batcher(settings, flush_ms=0, queue_max_sales=100) as b:
        # As if the process were killed: its own last fold never runs.
        monkeypatch.setattr(b.db.folder, "close", _nothing)
        await b.submit([sale(2, 3)], False, NOW)
    assert await unrolled_count(settings) == 1
    database = db.connect(settings)
    try:
        await Upkeep(database, lambda: datetime(2026, 11, 20, tzinfo=UTC), timedelta(days=30)).once()
    finally:
        await database.dispose()
    assert await unrolled_count(settings) == 0
    *_, wrong = await figures(settings)
    assert wrong == []


async def _nothing() -> None:
    return None


@postgresql
async def test_check_repair_empties_unrolled_sales(no_fold: None, at_once: Batcher, settings: config.Settings) -> None:
    await at_once.submit([sale(1, 4, quantity=2)], False, NOW)
    before = await figures(settings)
    async with at_once.db.writer.begin() as conn:
        await reports.rebuild(conn)
    assert await unrolled_count(settings) == 0
    assert await figures(settings) == before


async def test_a_sale_written_during_a_fold_gets_a_fold_of_its_own(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(unrolled, "FOLD_AFTER", 0.001)
    monkeypatch.setattr(unrolled, "RETRY_AFTER", 0.001)
    started, release = asyncio.Event(), asyncio.Event()
    calls: list[str] = []

    async def fold() -> int:
        calls.append("fold")
        if len(calls) == 1:
            started.set()
            await release.wait()
        if len(calls) == 2:
            raise ConnectionError("the database is away")
        return 1

    folder = unrolled.Folder(fold)
    folder.due()
    await asyncio.wait_for(started.wait(), 5)
    folder.due()  # written while the first fold runs: that fold may not see it
    release.set()
    # The second fold fails (the database away), and a third is tried.
    await eventually(lambda: len(calls) == 3, what="a fold after the one that failed")
    await folder.close()
    assert calls == ["fold"] * 3
    folder.due()  # closed: no more
    assert calls == ["fold"] * 3
