"""Group commit: batches, isolation of failures, back-pressure, rollups."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from salesreport import config, db, reports
from salesreport.api import create_app
from salesreport.changes import Changes
from salesreport.ingestion import Batcher, Catalog, Rejected, SaleIn, Stored, Unavailable
from tests.conftest import NOW, PRODUCTS, STORES, Clock, count_sales, eventually, seed
from tests.test_health import execute, holding_the_writer

pytestmark = pytest.mark.anyio


@contextlib.asynccontextmanager
async def running_batcher(settings: config.Settings, **options: Any) -> AsyncIterator[Batcher]:
    """A started batcher on a seeded database, with its own catalog and change watcher; closed after."""
    await seed(settings, PRODUCTS, STORES)
    database = db.connect(settings)
    changes = Changes(database)
    changes.start()
    catalog = Catalog(database, changes)
    await catalog.refresh()
    b = Batcher(database, catalog, max_sales=1000, **options)
    b.start()
    try:
        yield b
    finally:
        await b.close()
        await changes.close()
        await database.dispose()


@pytest.fixture
async def batcher(settings: config.Settings) -> AsyncIterator[Batcher]:
    # A long flush interval so that concurrent submissions share one batch.
    async with running_batcher(settings, flush_ms=200, queue_max_sales=10) as b:
        yield b


@pytest.fixture
async def at_once(settings: config.Settings) -> AsyncIterator[tuple[Batcher, list[list[int]]]]:
    """A batcher as ``serve`` runs it (no wait for company), whose writes are recorded: the products of each."""
    writes: list[list[int]] = []

    async def recorded(database: db.Database, plan: Any, slot: int) -> object:
        writes.append([sale.product_id for request in plan.batch for sale in request.items])
        return await db.write_batch(database, plan, slot)

    async with running_batcher(settings, flush_ms=0, queue_max_sales=100, write_timeout=30, write=recorded) as b:
        yield b, writes


def sale(product_id: int = 1, store_id: int = 1, **kw: Any) -> SaleIn:
    return SaleIn(product_id=product_id, store_id=store_id, **kw)


async def test_a_failing_request_fails_alone(batcher: Batcher, settings: config.Settings) -> None:
    now = NOW  # received_at: what the app's clock would say
    stored = await batcher.submit([sale(idempotency_key="k")], False, now)
    assert stored.created
    results = await asyncio.gather(
        batcher.submit([sale(2, 1)], False, now),
        batcher.submit([sale(3, 1), sale(2, 1, idempotency_key="k")], True, now),  # conflicts with "k"
        batcher.submit([sale(1, 2, idempotency_key="k")], False, now),  # same key, other store: new
        batcher.submit([sale(1, 1, idempotency_key="k")], False, now),  # replay
        return_exceptions=True,
    )
    assert isinstance(results[1], Rejected)
    assert [e.index for e in results[1].errors] == [1]
    assert isinstance(results[0], Stored) and isinstance(results[2], Stored) and isinstance(results[3], Stored)
    assert results[0].created and results[2].created
    assert results[3].items == stored.items and results[3].new == [False]
    assert await count_sales(settings) == 3


async def test_one_key_twice_in_one_batch_is_one_sale(batcher: Batcher, settings: config.Settings) -> None:
    now = NOW  # received_at: what the app's clock would say
    first, second, other = await asyncio.gather(
        batcher.submit([sale(idempotency_key="same")], False, now),
        batcher.submit([sale(idempotency_key="same")], False, now),
        batcher.submit([sale(2, idempotency_key="same")], False, now),
        return_exceptions=True,
    )
    assert isinstance(first, Stored) and isinstance(second, Stored)
    assert first.items == second.items and first.created
    assert not second.created  # a replay of its batch-mate: 200, not 201
    assert isinstance(other, Rejected)
    assert await count_sales(settings) == 1


async def test_full_queue_answers_unavailable(batcher: Batcher) -> None:
    now = NOW  # received_at: what the app's clock would say
    waiting = asyncio.ensure_future(batcher.submit([sale()] * 10, True, now))
    # Queued, and held there by the batcher's 200 ms wait for company: the queue is full.
    await eventually(lambda: batcher._queued_sales == 10, what="the 10 sales are queued")
    with pytest.raises(Unavailable) as info:
        await batcher.submit([sale()], False, now)
    assert info.value.retry_after >= 1
    assert (await waiting).created
    # Once written, there is room again.
    assert (await batcher.submit([sale()], False, now)).created


async def test_close_writes_what_is_queued_and_refuses_more(batcher: Batcher, settings: config.Settings) -> None:
    now = NOW  # received_at: what the app's clock would say
    pending = asyncio.ensure_future(batcher.submit([sale()], False, now))
    await eventually(lambda: batcher._queued_sales == 1, what="the sale is queued")
    await batcher.close()
    assert (await pending).created
    with pytest.raises(Unavailable):
        await batcher.submit([sale()], False, now)
    assert await count_sales(settings) == 1


async def test_503_with_retry_after_over_http(settings: config.Settings, clock: Clock) -> None:
    await seed(settings, PRODUCTS, STORES)
    app = create_app(replace(settings, queue_max_sales=5, flush_ms=300), clock=clock)
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1") as http:
            body = json.dumps([{"product_id": 1, "store_id": 1}] * 3)
            responses = await asyncio.gather(
                *(http.post("/sales", content=body, headers={"content-type": "application/json"}) for _ in range(4))
            )
    statuses = sorted(r.status_code for r in responses)
    assert statuses.count(201) >= 1 and 503 in statuses
    refused = next(r for r in responses if r.status_code == 503)
    assert refused.headers["content-type"] == "application/problem+json"
    assert int(refused.headers["retry-after"]) >= 1
    assert await count_sales(settings) == 3 * statuses.count(201)


async def test_concurrent_load_keeps_rollups_equal_to_raw_sales(
    client: httpx.AsyncClient, settings: config.Settings
) -> None:
    async def post(i: int) -> int:
        body = [
            {"product_id": 1 + (i + j) % 3, "store_id": 1 + (i * 7 + j) % 4, "quantity": 1 + j % 5,
             "sold_at": f"2025-{1 + i % 12:02d}-28T23:30:00Z", "idempotency_key": f"{i}-{j}"}
            for j in range(1 + i % 5)
        ]  # fmt: skip
        response = await client.post("/sales", json=body if i % 2 else body[0])
        return response.status_code

    statuses = await asyncio.gather(*(post(i) for i in range(200)))
    assert set(statuses) == {201}
    replays = await asyncio.gather(*(post(i) for i in range(0, 200, 7)))
    assert set(replays) == {200}
    expected = sum(1 + i % 5 if i % 2 else 1 for i in range(200))
    assert await count_sales(settings) == expected
    database = db.connect(settings)
    try:
        async with database.reader.connect() as conn:
            assert await reports.differences(conn) == []
    finally:
        await database.dispose()


async def test_a_value_the_database_refuses_fails_alone(batcher: Batcher, settings: config.Settings) -> None:
    # No input can reach this since prices are bounded on import; the batcher
    # must still keep the damage to the one request.
    batcher.catalog.histories[3] = [(db.BEGINNING, 2**62)]
    now = NOW  # received_at: what the app's clock would say
    results = await asyncio.gather(
        batcher.submit([sale(1, 1)], False, now),
        batcher.submit([sale(3, 1, quantity=4)], False, now),
        batcher.submit([sale(2, 2)], False, now),
        return_exceptions=True,
    )
    assert isinstance(results[1], Rejected)
    assert results[1].errors[0].field == "body"
    assert isinstance(results[0], Stored) and isinstance(results[2], Stored)
    assert results[0].created and results[2].created
    assert await count_sales(settings) == 2


async def test_a_dead_writer_answers_what_it_held_and_starts_again(batcher: Batcher, settings: config.Settings) -> None:
    waiting = asyncio.ensure_future(batcher.submit([sale()], False, NOW))
    await eventually(lambda: batcher._queued_sales == 1, what="the sale is queued")
    task = batcher._task
    assert task is not None
    task.cancel()
    with pytest.raises(Unavailable):
        await asyncio.wait_for(waiting, 5)
    assert batcher.running and batcher._task is not task and batcher.restarts == 1
    assert (await asyncio.wait_for(batcher.submit([sale()], False, NOW), 5)).created
    assert await count_sales(settings) == 1


async def test_a_failed_reload_is_tried_again(batcher: Batcher, settings: config.Settings) -> None:
    catalog = batcher.catalog
    loaded = catalog.version
    await execute(settings, "UPDATE versions SET version = version + 1 WHERE name = 'catalog'")
    await eventually(lambda: catalog.changes.stale("catalog", loaded), what="the change is noticed")
    await execute(settings, "ALTER TABLE stores RENAME TO stores_elsewhere")
    try:
        with pytest.raises(sa.exc.DBAPIError):
            await catalog.refresh()
        assert catalog.version == loaded and catalog.changes.stale("catalog", loaded)
    finally:
        await execute(settings, "ALTER TABLE stores_elsewhere RENAME TO stores")
    await catalog.refresh()
    assert catalog.version == loaded + 1 and not catalog.changes.stale("catalog", catalog.version)


async def test_batches_grow_only_under_concurrency(
    at_once: tuple[Batcher, list[list[int]]], settings: config.Settings
) -> None:
    """A lone request is written at once, alone; requests that arrive together (in one turn of the event
    loop) are one batch, and so are those that come while a batch is being written, after it."""
    batcher, writes = at_once
    assert (await batcher.submit([sale(1)], False, NOW)).created
    together = await asyncio.gather(*(batcher.submit([sale(p)], False, NOW) for p in (2, 3)))
    assert all(stored.created for stored in together)
    assert writes == [[1], [2, 3]]
    writes.clear()
    async with holding_the_writer(settings):
        first = asyncio.ensure_future(batcher.submit([sale(2)], False, NOW))
        await eventually(lambda: len(writes) == 1, what="the lone request is being written")
        rest = [asyncio.ensure_future(batcher.submit([sale(p)], False, NOW)) for p in (3, 1, 2)]
        await eventually(lambda: batcher._queued_sales == 3, what="the next three queue behind it")
        assert not first.done()
    assert all(stored.created for stored in await asyncio.gather(first, *rest))
    assert writes == [[2], [3, 1, 2]]
    assert await count_sales(settings) == 7


async def test_close_waits_for_the_write_under_way(
    at_once: tuple[Batcher, list[list[int]]], settings: config.Settings
) -> None:
    batcher, writes = at_once
    async with holding_the_writer(settings):
        lone = asyncio.ensure_future(batcher.submit([sale(2)], False, NOW))
        await eventually(lambda: len(writes) == 1, what="the lone request is being written")
        closing = asyncio.ensure_future(batcher.close())
        await eventually(lambda: batcher._closing, what="the batcher is closing")
        with pytest.raises(Unavailable):  # closing: no new sales
            await batcher.submit([sale(3)], False, NOW)
        for _ in range(20):  # turns of the event loop in which a close that does not wait would end
            await asyncio.sleep(0)
        assert not closing.done() and not lone.done()
    await asyncio.wait_for(closing, 30)
    assert (await lone).created
    assert await count_sales(settings) == 1


async def test_a_write_past_its_deadline_is_answered_503_and_goes_on_whole(
    at_once: tuple[Batcher, list[list[int]]], settings: config.Settings
) -> None:
    """The deadline answers the client; the write is not cancelled: it commits (or not) whole, the next
    batch waits for it, and the retry is a replay."""
    batcher, writes = at_once
    batcher.write_timeout = 0.5
    async with holding_the_writer(settings):
        late = asyncio.ensure_future(batcher.submit([sale(2, idempotency_key="late")], False, NOW))
        await eventually(lambda: len(writes) == 1, what="the request is being written")
        with pytest.raises(Unavailable):
            await late
        assert batcher._in_flight  # still being written
        batcher.write_timeout = 30
        behind = asyncio.ensure_future(batcher.submit([sale(3)], False, NOW))
        await eventually(lambda: batcher._queued_sales == 1, what="the next request queues behind it")
    assert (await asyncio.wait_for(behind, 30)).created
    assert writes == [[2], [3]]
    replay = await batcher.submit([sale(2, idempotency_key="late")], False, NOW)
    assert not replay.created
    assert await count_sales(settings) == 2
