"""Reads from a streaming replica: reports there, own writes on the primary, lag, fallbacks, outages.

The tests start a primary of their own and a real streaming replica of it (``pg_basebackup -R``), as
they stop each of them. The app's clock is the test's: the replica's lag is the app's "now" minus the
instant of the primary's WAL position that the replica has replayed, so moving the clock makes a
paused replica as far behind as a test wants.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, replace
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

from salesreport import config, db
from salesreport.db.replica import BACK_AFTER, Reads
from salesreport.service import Service
from tests import pg
from tests.conftest import ENABLE_PG, NOW, TABLES, Clock, app_client, eventually, migrate, seed
from tests.test_metrics import scrape

pytestmark = pytest.mark.anyio

MONTH = "2026-11"
MAX_LAG = 5.0


@dataclass
class Pair:
    primary: pg.Cluster
    replica: pg.Cluster


@pytest.fixture(scope="module")
def pair() -> Iterator[Pair]:
    bindir = pg.find_bindir()
    if bindir is None or not (bindir / "pg_basebackup").exists():
        if os.environ.get("CI") == "true":
            pytest.fail(ENABLE_PG)
        pytest.skip(ENABLE_PG)
    primary = pg.create(bindir)
    try:
        primary.psql("CREATE DATABASE salesreport")
        migrate(primary.url("salesreport"))
        replica = pg.replica_of(primary)
        try:
            yield Pair(primary, replica)
        finally:
            pg.destroy(replica)
    finally:
        pg.destroy(primary)


@pytest.fixture
def settings(pair: Pair) -> config.Settings:
    for cluster in (pair.primary, pair.replica):  # a test that failed half-way may have left one stopped
        if not _running(cluster):
            cluster.start()
    pair.primary.psql(f"TRUNCATE {TABLES} RESTART IDENTITY", "salesreport")
    return replace(
        config.load(),
        database_url=config.async_url(pair.primary.url("salesreport")),
        database_read_url=config.async_url(pair.replica.url("salesreport")),
        max_lag=MAX_LAG,
        lag_check=0.02,
        default_timezone="UTC",
        log_format="console",
    )


def _running(cluster: pg.Cluster) -> bool:
    return (cluster.datadir / "postmaster.pid").exists()


@pytest.fixture
async def client(settings: config.Settings, clock: Clock) -> AsyncIterator[httpx.AsyncClient]:
    async with app_client(settings, clock) as http:
        # Every test begins with the replica caught up and reports read there.
        await eventually(lambda: reads(http).on_replica, 10, what="reports read from the replica")
        yield http


def reads(client: httpx.AsyncClient) -> Reads:
    svc: Service = client.app.state.service  # type: ignore[attr-defined]
    return svc.reads


async def on_replica(settings: config.Settings, sql: str) -> Any:
    assert settings.database_read_url is not None
    engine = create_async_engine(settings.database_read_url)
    try:
        async with engine.connect() as conn:
            return await conn.scalar(sa.text(sql))
    finally:
        await engine.dispose()


@pytest.fixture
async def paused(settings: config.Settings) -> AsyncIterator[None]:
    """The replica receives WAL but replays none of it until the test ends."""
    await on_replica(settings, "SELECT pg_wal_replay_pause()")
    try:
        await eventually(
            lambda: on_replica(settings, "SELECT pg_get_wal_replay_pause_state() = 'paused'"), 10, what="replay paused"
        )
        yield
    finally:
        await on_replica(settings, "SELECT pg_wal_replay_resume()")


async def sell(client: httpx.AsyncClient, **sale: Any) -> httpx.Response:
    body = {"product_id": 2, "store_id": 1, **sale}
    return await client.post("/sales", content=json.dumps(body), headers={"content-type": "application/json"})


async def top_stores(client: httpx.AsyncClient, limit: int = 10) -> httpx.Response:
    """The month's top stores; a ``limit`` not asked for before is a report not kept in memory (see ``cache``)."""
    response = await client.get("/reports/top-stores", params={"month": MONTH, "limit": limit})
    assert response.status_code == 200, response.text
    return response


def stores_in(response: httpx.Response) -> list[tuple[int, str]]:
    return [(row["id"], row["revenue"]) for row in response.json()]


async def test_reports_read_the_replica_say_how_stale_and_leave_it_when_it_lags_too_far(
    client: httpx.AsyncClient, clock: Clock, paused: None, capsys: pytest.CaptureFixture[str]
) -> None:
    metered = await scrape(client)
    assert (await sell(client)).status_code == 201
    clock.advance(seconds=3)
    await eventually(lambda: (reads(client).lag_seconds or 0) >= 3, what="a lag of 3 s measured")

    # The replica has not replayed the sale: the report is as of before it, and says so.
    response = await top_stores(client)
    assert stores_in(response) == []
    assert response.headers["X-Data-Source"] == "replica"
    assert response.headers["X-Data-As-Of"] == NOW.isoformat()
    assert response.headers["X-Data-Lag-Seconds"] == "3"
    csv = await client.get("/reports/top-stores", params={"month": MONTH, "format": "csv"})
    assert csv.headers["X-Data-As-Of"] == NOW.isoformat()
    page = await client.get("/", params={"month": MONTH})
    assert page.status_code == 200
    assert page.headers["X-Data-Source"] == "replica"
    assert 'id="freshness">Figures as of 12:00:00\u202fPM, 3 seconds behind<' in page.text

    # Further behind than SALESREPORT_MAX_LAG_S: reports read the primary, which has the sale.
    clock.advance(seconds=3)
    await eventually(lambda: not reads(client).on_replica, what="reads moved to the primary")
    assert reads(client).fallbacks == 1
    assert "reads moved to the primary" in (logged := capsys.readouterr().out)
    assert "the replica is 6.0 s behind (more than 5 s)" in logged
    response = await top_stores(client)
    assert stores_in(response) == [(1, "45.50")]
    assert response.headers["X-Data-Source"] == "primary"
    assert response.headers["X-Data-Lag-Seconds"] == "0"
    assert response.headers["X-Data-As-Of"] == clock.now.isoformat()
    ready = await client.get("/health/ready")
    assert ready.status_code == 200
    assert ready.json()["reads"] == {"source": "primary", "replica_lag_s": 6.0, "fallbacks": 1}
    # And what the monitoring sees.
    now_metered = await scrape(client)
    assert now_metered("salesreport_replica_lag_seconds") == 6.0
    assert now_metered.since(metered, "salesreport_read_fallbacks_total") == 1

    # Back within SALESREPORT_MAX_LAG_S: reports go back after three measures in a row find it so, so that
    # a replica hovering around the bound does not move them back and forth. The measures are taken
    # here, one by one (the clock set back stands for a replica that caught up part of the way).
    await reads(client).close()
    clock.advance(seconds=-2)
    for _ in range(BACK_AFTER - 1):
        await reads(client).check()
        assert reads(client).lag_seconds == 4 and not reads(client).on_replica
    clock.advance(seconds=2)  # too far again: the count starts over
    await reads(client).check()
    clock.advance(seconds=-2)
    for _ in range(BACK_AFTER - 1):
        await reads(client).check()
        assert not reads(client).on_replica
    await reads(client).check()
    assert reads(client).on_replica and reads(client).fallbacks == 1
    clock.advance(seconds=2)
    await reads(client).check()
    assert not reads(client).on_replica and reads(client).fallbacks == 2
    clock.advance(seconds=-2)
    reads(client).start()

    # Replay resumes: the replica catches up, and reports go back to it.
    await on_replica_resume(client)
    assert "reads moved to the replica" in capsys.readouterr().out
    response = await top_stores(client)
    assert stores_in(response) == [(1, "45.50")]
    assert response.headers["X-Data-Source"] == "replica"
    assert response.headers["X-Data-Lag-Seconds"] == "0"


async def on_replica_resume(client: httpx.AsyncClient) -> None:
    svc: Service = client.app.state.service  # type: ignore[attr-defined]
    await on_replica(svc.settings, "SELECT pg_wal_replay_resume()")
    await eventually(lambda: reads(client).on_replica, 10, what="reports back on the replica")


async def test_what_must_see_its_own_writes_reads_the_primary(
    client: httpx.AsyncClient, settings: config.Settings, paused: None
) -> None:
    # A till reads back the sale it just posted, which the paused replica does not have.
    sale = (await sell(client)).json()
    response = await client.get(f"/sales/{sale['id']}")
    assert response.status_code == 200, response.text
    assert response.json()["id"] == sale["id"]
    assert response.headers["X-Data-Source"] == "primary"

    # A catalog change is announced and loaded from the primary: the replica would have the old
    # catalog, and a worker that loaded it would keep it until the next change.
    await seed(settings, [{"id": 5, "name": "Tea", "price": 300}], [])
    await eventually(lambda: _has_product(client, 5), what="the new product served")

    # A session opened at sign-in is read at once on the redirect.
    from salesreport.auth import create_key

    database = db.connect(settings)
    try:
        async with database.writer.begin() as conn:
            _, key = await create_key(conn, "owner", None)
    finally:
        await database.dispose()
    signed = await client.post("/signin", data={"key": key, "next": "/"})
    assert signed.status_code == 303, signed.text
    page = await client.get("/")
    assert page.status_code == 200, page.text
    assert 'id="top-stores"' in page.text and 'name="key"' not in page.text


async def _has_product(client: httpx.AsyncClient, product_id: int) -> bool:
    response = await client.get(f"/products/{product_id}")
    return response.status_code == 200


async def test_a_stopped_replica_sends_reads_to_the_primary_and_back_when_it_returns(
    client: httpx.AsyncClient, pair: Pair
) -> None:
    assert (await sell(client)).status_code == 201
    await eventually(lambda: _report_shows(client, "replica"), what="the sale read from the replica")
    pair.replica.stop()
    try:
        # At once, before the next measure: a read that finds the replica gone is served by the primary.
        response = await top_stores(client, limit=9)
        assert stores_in(response) == [(1, "45.50")]
        assert response.headers["X-Data-Source"] == "primary"
        assert not reads(client).on_replica
        assert reads(client).fallbacks >= 1
        for limit in range(1, 6):
            assert (await top_stores(client, limit)).headers["X-Data-Source"] == "primary"
    finally:
        pair.replica.start()
    await eventually(lambda: reads(client).on_replica, 10, what="reports back on the replica")
    assert (await top_stores(client)).headers["X-Data-Source"] == "replica"


async def _report_shows(client: httpx.AsyncClient, source: str) -> bool:
    response = await top_stores(client)
    return response.headers["X-Data-Source"] == source and stores_in(response) == [(1, "45.50")]


async def test_a_stopped_primary_leaves_reports_on_the_replica_and_sales_resume_when_it_returns(
    client: httpx.AsyncClient, clock: Clock, pair: Pair
) -> None:
    assert (await sell(client, idempotency_key="till-1-1")).status_code == 201
    await eventually(lambda: _report_shows(client, "replica"), what="the sale read from the replica")
    pair.primary.stop()
    try:
        await eventually(lambda: reads(client).primary_unreachable, what="the primary found unreachable")
        clock.advance(seconds=30)

        # Reports still answer from the replica, however far behind it now may be, and say so.
        response = await top_stores(client)
        assert stores_in(response) == [(1, "45.50")]
        assert response.headers["X-Data-Source"] == "replica"
        assert int(response.headers["X-Data-Lag-Seconds"]) >= 30
        page = await client.get("/", params={"month": MONTH})
        assert page.status_code == 200
        assert 'id="freshness">Figures as of 12:00:00\u202fPM, 30 seconds behind<' in page.text
        store = await client.get("/stores/1", params={"month": MONTH})
        assert store.status_code == 200
        # The catalog held in memory still answers.
        assert (await client.get("/products")).status_code == 200
        # A sale the replica has is found there; one it cannot know of is "retry", not "no such sale".
        assert (await client.get("/sales/1")).status_code == 200
        missing = await client.get("/sales/2")
        assert missing.status_code == 503
        assert missing.headers["Retry-After"] == "2"

        # Sales cannot be stored: 503 with Retry-After, nothing else.
        refused = await sell(client, idempotency_key="till-1-2")
        assert refused.status_code == 503, refused.text
        assert int(refused.headers["Retry-After"]) >= 1
        ready = await client.get("/health/ready")
        assert ready.status_code == 200
        assert ready.json()["status"] == "degraded"
        assert ready.json()["reads"]["source"] == "replica"
    finally:
        pair.primary.start()

    # The primary is back: the same app takes the sale again, and the reports come to have it.
    async def stored() -> bool:
        return (await sell(client, idempotency_key="till-1-2")).status_code == 201

    await eventually(stored, 20, every=0.1, what="a sale stored again")
    await eventually(lambda: reads(client).on_replica, 10, what="reports back on the replica")
    await eventually(lambda: _revenue_is(client, "91.00"), what="both sales in the report read from the replica")
    ready = await client.get("/health/ready")
    assert ready.status_code == 200 and ready.json()["status"] == "ok", ready.text


async def _revenue_is(client: httpx.AsyncClient, revenue: str) -> bool:
    response = await top_stores(client)
    return response.headers["X-Data-Source"] == "replica" and stores_in(response) == [(1, revenue)]
