"""Reports kept in a worker's memory: read once while nothing changes, never behind a sale the same worker
acknowledged, and behind another worker's by at most ``changes.BOUND`` (on that worker's clock)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from typing import Any

import httpx
import pytest

from salesreport import config, db
from salesreport.changes import BOUND
from salesreport.service import Service
from tests.conftest import NOW, STORES, Clock, app_client, seed

pytestmark = pytest.mark.anyio

MONTH = NOW.strftime("%Y-%m")


def svc(client: httpx.AsyncClient) -> Service:
    service: Service = client.app.state.service  # type: ignore[attr-defined]
    return service


async def sell(client: httpx.AsyncClient, store_id: int = 1, quantity: int = 1, **extra: Any) -> None:
    body = {"product_id": 2, "store_id": store_id, "quantity": quantity, "sold_at": f"{MONTH}-10T10:00:00Z", **extra}
    response = await client.post("/sales", json=body)
    assert response.status_code == 201, response.text


async def caught_up(client: httpx.AsyncClient) -> None:
    """The worker's copy of the change counters holds its own sales. A sale counts in what the reports
    show the moment it is acknowledged, and once more when the counters' poll (``changes.POLL``)
    first reads its batch's counter: a report read in between is read again after that poll."""
    await svc(client).catalog.changes.poll()


async def top_stores(client: httpx.AsyncClient, **params: str) -> list[tuple[int, str, str]]:
    response = await client.get("/reports/top-stores", params={"month": MONTH, **params})
    assert response.status_code == 200, response.text
    return [(s["id"], s["address"], s["revenue"]) for s in response.json()]


async def test_a_report_is_read_once_while_nothing_changes_and_again_after_each_sale(
    client: httpx.AsyncClient,
) -> None:
    reports = svc(client).reports
    await sell(client)
    await caught_up(client)
    first = await top_stores(client)
    reads = reports.reads
    assert [await top_stores(client) for _ in range(5)] == [first] * 5
    assert reports.reads == reads
    # CSV is another answer, kept apart.
    csv = await client.get("/reports/top-stores", params={"month": MONTH, "format": "csv"})
    assert csv.headers["content-type"].startswith("text/csv") and "45.50" in csv.text
    assert reports.reads == reads + 1
    # Acknowledged, then asked for: the report holds the sale, without waiting for anything.
    for n in range(2, 5):
        await sell(client)
        assert await top_stores(client) == [(1, STORES[0]["address"], f"{45.50 * n:.2f}")]
    assert reports.reads == reads + 4


async def test_requests_for_a_report_being_read_wait_for_that_one_read(client: httpx.AsyncClient) -> None:
    await sell(client)
    await caught_up(client)
    reports = svc(client).reports
    reads = reports.reads
    answers = await asyncio.gather(*(top_stores(client, limit="7") for _ in range(20)))
    assert answers == [answers[0]] * 20 and answers[0] == [(1, STORES[0]["address"], "45.50")]
    assert reports.reads == reads + 1


class Ticks:
    """A monotonic clock that moves only when the test moves it (ahead of the real one, which the
    worker's counters were read by so far)."""

    def __init__(self) -> None:
        self.now = time.monotonic() + 1000.0

    def __call__(self) -> float:
        return self.now


async def test_another_worker_s_sale_and_catalog_change_show_within_the_bound(
    settings: config.Settings, clock: Clock
) -> None:
    async with app_client(settings, clock) as a, app_client(settings, clock) as b:
        ticks = Ticks()
        svc(b).catalog.changes.clock = ticks
        await sell(a)
        ticks.now += BOUND + 0.01
        assert await top_stores(b) == [(1, STORES[0]["address"], "45.50")]

        await sell(a, quantity=2)
        # Within the bound B may still answer what it read (it does on PostgreSQL, which it asks
        # at most every BOUND; SQLite's counters are read at each request).
        before = await top_stores(b)
        assert before in ([(1, STORES[0]["address"], "45.50")], [(1, STORES[0]["address"], "136.50")])
        ticks.now += BOUND + 0.01
        assert await top_stores(b) == [(1, STORES[0]["address"], "136.50")]

        # A new address, imported by another process, is a new answer too.
        await seed(settings, [], [{**STORES[0], "address": "2 Red Square, Moscow"}])
        ticks.now += BOUND + 0.01
        assert await top_stores(b) == [(1, "2 Red Square, Moscow", "136.50")]


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
async def test_a_worker_that_cannot_know_what_changed_reads_the_database(
    client: httpx.AsyncClient, settings: config.Settings
) -> None:
    """Its counters unread past the bound and the database away: nothing is answered from memory."""
    await sell(client)
    await top_stores(client)
    changes = svc(client).catalog.changes
    ticks = Ticks()
    changes.clock = ticks
    ticks.now += BOUND + 0.01

    async def away() -> None:
        raise OSError("the database is away")

    changes.poll = away  # type: ignore[method-assign]
    assert await changes.stamp() is None
    reads = svc(client).reports.reads
    await top_stores(client)
    assert svc(client).reports.reads == reads + 1


async def test_the_commands_that_rewrite_the_rollups_are_seen(
    client: httpx.AsyncClient, settings: config.Settings, database_url: str, clock: Clock
) -> None:
    """The bulk path (``demo``, imports of history) and ``check --repair`` change what reports show
    behind the workers' backs: a report kept before shows their sums."""
    await sell(client)
    assert await top_stores(client) == [(1, STORES[0]["address"], "45.50")]
    ticks = Ticks()
    svc(client).catalog.changes.clock = ticks
    sale: dict[str, Any] = {
        "store_id": 1,
        "product_id": 2,
        "quantity": 1,
        "unit_price": 100,
        "catalog_price": 100,
        "amount": 100,
    }
    sale |= {"month": int(MONTH.replace("-", "")), "sold_at": clock(), "received_at": clock(), "idempotency_key": None}
    database = db.connect(settings)
    try:
        async with database.writer.begin() as conn:
            await db.store_history(conn, [sale])
        ticks.now += BOUND + 0.01
        assert await top_stores(client) == [(1, STORES[0]["address"], "46.50")]
        # A sale stored without its rollups (as if by a bug): only the repair counts it.
        async with database.writer.begin() as conn:
            await db.insert_sales_bulk(conn, [sale])
    finally:
        await database.dispose()
    ticks.now += BOUND + 0.01
    assert await top_stores(client) == [(1, STORES[0]["address"], "46.50")]
    repaired = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "salesreport", "check", "--repair"],
        env={**os.environ, "DATABASE_URL": database_url},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert repaired.returncode == 0, repaired.stderr
    ticks.now += BOUND + 0.01
    assert await top_stores(client) == [(1, STORES[0]["address"], "47.50")]


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
async def test_a_replay_answered_by_a_worker_counts_as_its_own_acknowledgement(
    settings: config.Settings, clock: Clock
) -> None:
    """Worker B stores a sale; the till's retry reaches worker A (200, a replay): a report asked of A
    after that answer holds the sale, though A has not read the counters since."""
    async with app_client(settings, clock) as a, app_client(settings, clock) as b:
        ticks = Ticks()
        svc(a).catalog.changes.clock = ticks
        ticks.now += BOUND + 0.01
        assert await top_stores(a) == []
        await sell(b, idempotency_key="till-7")
        retry = await a.post(
            "/sales",
            json={
                "product_id": 2,
                "store_id": 1,
                "quantity": 1,
                "sold_at": f"{MONTH}-10T10:00:00Z",
                "idempotency_key": "till-7",
            },
        )
        assert retry.status_code == 200, retry.text
        assert await top_stores(a) == [(1, STORES[0]["address"], "45.50")]
