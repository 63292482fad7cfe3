"""Every command and feature through PgBouncer in transaction pooling mode, with nothing else set.

PgBouncer (``pgbouncer`` fixture) lets four server connections serve all its clients, so
consecutive transactions of one client run on different server connections: anything that
outlived a transaction on the server (a session setting, a named prepared statement, a LISTEN,
a session advisory lock) would break here.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import sqlalchemy as sa

from salesreport import changes, config, db
from salesreport.db import pooling
from salesreport.db.postgres import SLOT_LOCKS
from salesreport.health import head_revision
from tests import pg
from tests.conftest import TABLES, Clock, app_client, eventually, scalar
from tests.test_cli import cli, write

pytestmark = pytest.mark.anyio

JSON = {"content-type": "application/json"}


@pytest.fixture
def bounced(pg_cluster: pg.Cluster, pgbouncer: pg.Bouncer) -> config.Settings:
    """Settings whose DATABASE_URL is PgBouncer's, in front of the migrated, emptied test database."""
    pg_cluster.psql(f"TRUNCATE {TABLES} RESTART IDENTITY", "salesreport")
    base = config.load()
    url = config.async_url(pgbouncer.url("salesreport"))
    return replace(base, database_url=url, default_timezone="UTC", log_format="console")


def plain(settings: config.Settings) -> str:
    """The URL as a user sets it (what the command line is given)."""
    return settings.database_url.replace("postgresql+asyncpg://", "postgresql://")


async def rows(settings: config.Settings, query: sa.Select[Any]) -> list[sa.Row[Any]]:
    database = db.connect(settings)
    try:
        async with database.reader.connect() as conn:
            return list(await conn.execute(query))
    finally:
        await database.dispose()


@contextlib.asynccontextmanager
async def two_instances(settings: config.Settings, clock: Clock) -> AsyncIterator[tuple[httpx.AsyncClient, ...]]:
    """Two apps on the same database, as two hosts would run them."""
    async with app_client(settings, clock) as first, app_client(settings, clock) as second:
        yield first, second


def direct(settings: config.Settings, cluster: pg.Cluster) -> config.Settings:
    return replace(settings, database_url=config.async_url(cluster.url("salesreport")))


async def test_the_endpoint_is_told_apart(bounced: config.Settings, pg_cluster: pg.Cluster) -> None:
    """Through PgBouncer: no session setting, unnamed statements; directly: as before."""
    for which, pooled in ((direct(bounced, pg_cluster), False), (bounced, True)):
        database = db.connect(which)
        try:
            async with database.reader.connect() as conn:
                raw = await conn.get_raw_connection()
                assert pooling.is_pooled(raw.info) is pooled
                assert raw.driver_connection is not None
                assert (raw.driver_connection._config.statement_cache_size == 0) is pooled
                query = sa.text("SELECT setting, source FROM pg_settings WHERE name = 'synchronous_commit'")
                setting, source = (await conn.execute(query)).one()
                assert setting == "on"
                assert (source == "client") is not pooled
        finally:
            await database.dispose()


async def test_a_pgbouncer_that_ignores_the_session_setting_is_told_apart(
    bounced: config.Settings, pg_cluster: pg.Cluster, clock: Clock
) -> None:
    """Told to ignore ``synchronous_commit`` at startup, PgBouncer accepts it without passing it on:
    still pooled (its process id is not the server's), so unnamed statements and a durable setting
    per writing transaction, and concurrent writes through two server connections work."""
    binary = pg.find_pgbouncer()
    assert binary is not None
    lenient = pg.start_bouncer(
        binary, pg_cluster, pool_size=1, settings="ignore_startup_parameters = synchronous_commit\n"
    )
    try:
        settings = replace(bounced, database_url=config.async_url(lenient.url("salesreport")))
        database = db.connect(settings)
        try:
            async with database.reader.connect() as conn:
                raw = await conn.get_raw_connection()
                assert pooling.is_pooled(raw.info)
                assert raw.driver_connection is not None
                assert raw.driver_connection._config.statement_cache_size == 0
        finally:
            await database.dispose()
        # Each process tells it apart on its first connection, through the same server connection.
        for _ in range(3):
            listed = cli(plain(settings), "keys", "list")
            assert listed.returncode == 0, listed.stderr
        async with app_client(settings, clock) as client:
            sales = [{"product_id": 1 + i % 3, "store_id": 1 + i % 4, "idempotency_key": f"k{i}"} for i in range(40)]
            answers = await asyncio.gather(*(client.post("/sales", json=sale) for sale in sales))
            assert [a.status_code for a in answers] == [201] * 40, answers[0].text
            top = await client.get("/reports/top-products")
            assert sum(p["quantity"] for p in top.json()) == 40
    finally:
        pg.stop_bouncer(lenient)


async def test_migrate_import_and_keys_through_pgbouncer(
    pg_cluster: pg.Cluster, pgbouncer: pg.Bouncer, tmp_path: Path
) -> None:
    pg_cluster.psql("DROP DATABASE IF EXISTS bounced_fresh")
    pg_cluster.psql("CREATE DATABASE bounced_fresh")
    url = pgbouncer.url("bounced_fresh")
    migrated = cli(url, "migrate")
    assert migrated.returncode == 0, migrated.stderr
    assert cli(url, "migrate").returncode == 0  # at the head already
    demo = cli(url, "demo", "--sales", "3000", "--stores", "3", "--products", "5")
    assert demo.returncode == 0, demo.stderr
    assert "3 stores, 5 products, 3000 sales" in demo.stdout
    retired = cli(url, "retire", "--product", "5")
    assert retired.returncode == 0, retired.stderr
    products = write(tmp_path / "p.csv", "id,name,price\n1,Tea,2.50\n2,Milk,0.99\n")
    stores = write(tmp_path / "s.csv", "id,address,timezone\n7,Main st. 1,Asia/Omsk\n")
    imported = cli(url, "import", "--products", products, "--stores", stores)
    assert imported.returncode == 0, imported.stderr
    assert "imported 2 products and 1 stores; 2 price changes" in imported.stdout
    created = cli(url, "keys", "create", "--role", "pos", "--store", "7")
    assert created.returncode == 0, created.stderr
    listing = cli(url, "keys", "list")
    assert listing.returncode == 0 and listing.stdout.startswith("1 pos 7 ")
    assert cli(url, "keys", "revoke", "1").returncode == 0
    assert "revoked" in cli(url, "keys", "list").stdout
    checked = cli(url, "check")
    assert checked.returncode == 0 and "rollups equal the raw sales" in checked.stdout


async def test_sales_replays_returns_reports_and_the_dashboard_through_pgbouncer(
    bounced: config.Settings, clock: Clock
) -> None:
    async with app_client(bounced, clock) as client:
        assert (await client.get("/health/ready")).status_code == 200
        single = {"product_id": 2, "store_id": 1, "quantity": 3, "idempotency_key": "pos-1"}
        first = await client.post("/sales", content=json.dumps(single), headers=JSON)
        assert first.status_code == 201, first.text
        replay = await client.post("/sales", content=json.dumps(single), headers=JSON)
        assert replay.status_code == 200 and replay.json() == first.json()
        array = [{"product_id": 1, "store_id": 4, "quantity": 2}, {"product_id": 3, "store_id": 2}]
        many = await client.post("/sales", content=json.dumps(array), headers=JSON)
        assert many.status_code == 201, many.text
        back = {"sale_id": first.json()["id"], "quantity": 1, "idempotency_key": "r-1"}
        given = await client.post("/returns", content=json.dumps(back), headers=JSON)
        assert given.status_code == 201, given.text
        again = await client.post("/returns", content=json.dumps(back), headers=JSON)
        assert again.status_code == 200 and again.json() == given.json()
        detail = (await client.get(f"/sales/{first.json()['id']}")).json()
        assert [r["quantity"] for r in detail["returns"]] == [1]
        stores = (await client.get("/reports/top-stores", params={"month": "2026-11"})).json()
        assert {row["id"]: row["revenue"] for row in stores} == {1: "91.00", 2: "1234.56", 4: "0.20"}
        products = (await client.get("/reports/top-products", params={"month": "2026-11"})).json()
        assert {row["id"]: row["quantity"] for row in products} == {1: 2, 2: 2, 3: 1}
        months = await client.get("/reports/revenue-by-month")
        assert months.status_code == 200
        page = await client.get("/", params={"month": "2026-11"})
        assert page.status_code == 200 and "Coffee" in page.text
    assert cli(plain(bounced), "check").returncode == 0


async def test_a_revoked_key_is_refused_by_every_instance(bounced: config.Settings, clock: Clock) -> None:
    async with two_instances(bounced, clock) as clients:
        created = cli(plain(bounced), "keys", "create", "--role", "owner")
        key = created.stdout.strip().splitlines()[-1]
        headers = {"authorization": f"Bearer {key}"}

        async def everywhere(status: int) -> bool:
            answers = [await c.get("/reports/top-stores", headers=headers) for c in clients]
            return all(a.status_code == status for a in answers)

        await eventually(lambda: everywhere(200), what="the new key is accepted by both instances")
        key_id = cli(plain(bounced), "keys", "list").stdout.split()[0]
        assert cli(plain(bounced), "keys", "revoke", key_id).returncode == 0
        await eventually(lambda: everywhere(401), what="the revoked key is refused by both instances")


async def test_a_catalog_change_reaches_another_instance(
    bounced: config.Settings, clock: Clock, tmp_path: Path
) -> None:
    async with two_instances(bounced, clock) as (first, second):
        assert (await second.get("/products/1")).json()["price"] == "0.10"
        # Through the first instance's database, not its HTTP side: any process may change the catalog.
        products = write(tmp_path / "p.csv", "id,name,price\n1,Milk,0.15\n")
        changed = cli(plain(bounced), "import", "--products", products, "--effective", "2026-11-01T00:00:00Z")
        assert changed.returncode == 0, changed.stderr

        async def new_price() -> bool:
            prices = [(await c.get("/products/1")).json()["price"] for c in (first, second)]
            return prices == ["0.15", "0.15"]

        await eventually(new_price, what="both instances show the new price")
        sale = await second.post("/sales", content=json.dumps({"product_id": 1, "store_id": 1}), headers=JSON)
        assert sale.json()["unit_price"] == "0.15"


async def test_concurrent_writers_share_the_few_server_connections(bounced: config.Settings, clock: Clock) -> None:
    """Many requests on two instances, more than PgBouncer's server connections: nothing is lost or doubled."""
    async with two_instances(bounced, clock) as clients:

        async def post(i: int) -> int:
            body = [{"product_id": 1 + i % 3, "store_id": 1 + i % 4, "idempotency_key": f"k-{i}"}]
            response = await clients[i % 2].post("/sales", content=json.dumps(body), headers=JSON)
            return response.status_code

        statuses = await asyncio.gather(*(post(i) for i in range(120)))
        assert statuses == [201] * 120
        again = await asyncio.gather(*(post(i) for i in range(0, 120, 7)))
        assert set(again) == {200}
        reports = await asyncio.gather(*(c.get("/reports/top-products", params={"month": "2026-11"}) for c in clients))
        assert all(r.status_code == 200 for r in reports)
    assert await scalar(bounced, sa.select(sa.func.count()).select_from(db.sales)) == 120
    assert cli(plain(bounced), "check").returncode == 0


async def test_a_batch_takes_the_first_rollup_slot_no_other_batch_holds(
    bounced: config.Settings, pg_cluster: pg.Cluster, clock: Clock
) -> None:
    own = os.getpid() % db.SLOTS  # this process's own slot (db.writer_slot)
    next_one = (own + 1) % db.SLOTS
    sale = json.dumps({"product_id": 2, "store_id": 1})
    slots = sa.select(db.store_month.c.slot, db.store_month.c.sales).order_by(db.store_month.c.slot)
    other = await asyncpg.connect(pg_cluster.url("salesreport"))
    try:
        async with app_client(bounced, clock) as client:
            async with other.transaction():
                # Another writer's batch is in flight in this worker's own slot.
                assert await other.fetchval("SELECT pg_try_advisory_xact_lock($1, $2)", SLOT_LOCKS, own)
                assert (await client.post("/sales", content=sale, headers=JSON)).status_code == 201
                assert [tuple(r) for r in await rows(bounced, slots)] == [(next_one, 1)]
            # Alone again, the worker's batches go to its own slot; the reports sum both.
            assert (await client.post("/sales", content=sale, headers=JSON)).status_code == 201
            assert sorted(tuple(r) for r in await rows(bounced, slots)) == sorted([(own, 1), (next_one, 1)])
            stores = (await client.get("/reports/top-stores", params={"month": "2026-11"})).json()
            assert stores == [{**stores[0], "id": 1, "revenue": "91.00"}]
    finally:
        await other.close()


async def test_migrate_refuses_while_workers_serve_through_pgbouncer(bounced: config.Settings, clock: Clock) -> None:
    async with app_client(bounced, clock):

        async def registered() -> bool:
            return bool(await scalar(bounced, sa.select(sa.func.count()).select_from(db.workers)))

        await eventually(registered, what="the worker records itself as serving")
        database = db.connect(bounced)
        try:
            async with database.writer.begin() as conn:  # as if this code were newer than the database
                await conn.execute(sa.text("UPDATE alembic_version SET version_num = '0005'"))
            refused = cli(plain(bounced), "migrate")
            assert refused.returncode == 1
            assert "1 workers of this service are connected" in refused.stderr
        finally:
            async with database.writer.begin() as conn:
                await conn.execute(sa.text("UPDATE alembic_version SET version_num = :head"), {"head": head_revision()})
            await database.dispose()
    # A worker that stopped has said so: nothing is refused.
    assert await scalar(bounced, sa.select(sa.func.count()).select_from(db.workers)) == 0


async def test_a_worker_that_has_not_read_the_counters_within_the_bound_reads_them_itself(
    bounced: config.Settings, pg_cluster: pg.Cluster
) -> None:
    """The delay of a change is bounded by ``changes.BOUND`` even when the poller falls behind (both endpoints)."""
    now = [1000.0]
    database = db.connect(bounced)
    watcher = changes.Changes(database, clock=lambda: now[0])
    try:
        assert watcher.stale("keys", 0)  # never read yet
        await watcher.poll()  # no counter row yet: version 0
        assert not watcher.stale("keys", 0)
        assert watcher.stale("keys", 1)
        now[0] += changes.BOUND
        assert not watcher.stale("keys", 0)
        now[0] += 0.001
        assert watcher.stale("keys", 0)  # the last read is too old to vouch for anything
        assert watcher.stale("catalog", 0)
        # A request read the keys' counter itself: that read vouches for them, and for them only.
        watcher.seen("keys", 0, now[0])
        assert not watcher.stale("keys", 0) and watcher.stale("catalog", 0)
        watcher.seen("keys", 5, now[0] - 1)  # a read older than the one it knows of changes nothing
        assert not watcher.stale("keys", 0)
        await watcher.poll()
        assert not watcher.stale("keys", 0) and not watcher.stale("catalog", 0)
    finally:
        await database.dispose()
    assert changes.POLL < changes.BOUND < math.inf
