"""Monthly partitions of the sales (PostgreSQL): where sales go, the months made ahead, keys across
partitions, and migration 0005 on a database holding a million sales."""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from alembic import command
from alembic.config import Config

from salesreport import config, db
from salesreport.api import create_app
from salesreport.db import partitions
from tests import pg
from tests.conftest import Clock, app_client, eventually, scalar
from tests.test_cli import cli

ROOT = Path(__file__).resolve().parent.parent


async def post(client: httpx.AsyncClient, body: object) -> httpx.Response:
    return await asyncio.wait_for(client.post("/sales", json=body), 10)


async def partition_of(settings: config.Settings, sale_id: int) -> str:
    database = db.connect(settings)
    try:
        async with database.reader.connect() as conn:
            query = sa.text("SELECT tableoid::regclass::text FROM sales WHERE id = :id")
            return str(await conn.scalar(query, {"id": sale_id}))
    finally:
        await database.dispose()


async def partitioned_months(settings: config.Settings) -> set[int]:
    database = db.connect(settings)
    try:
        async with database.reader.connect() as conn:
            return await partitions.months_with_partitions(conn)
    finally:
        await database.dispose()


@pytest.mark.anyio
@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
async def test_a_sale_of_a_month_without_partition_goes_to_the_default_one(
    settings: config.Settings, client: httpx.AsyncClient
) -> None:
    database = db.connect(settings)
    try:
        async with database.writer.begin() as conn:
            await partitions.ensure(conn, [202611])  # whatever the day the tests run on
    finally:
        await database.dispose()
    backlog = await post(client, {"product_id": 1, "store_id": 1, "sold_at": "2001-03-15T10:00:00Z"})
    assert backlog.status_code == 201, backlog.text
    assert 200103 not in await partitioned_months(settings)
    assert await partition_of(settings, backlog.json()["id"]) == "sales_default"
    # Now (the clock's 2026-11-20) in Moscow: the month's own partition.
    now = await post(client, {"product_id": 1, "store_id": 1})
    assert await partition_of(settings, now.json()["id"]) == "sales_p202611"
    # The reports count both, and check agrees with the rollups.
    months = (await client.get("/reports/revenue-by-month", params={"until": "2001-03", "months": 1})).json()
    assert months[0]["sales"] == 1
    assert cli(settings.database_url.replace("+asyncpg", ""), "check").returncode == 0


@pytest.mark.anyio
@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
async def test_a_worker_makes_the_months_around_now_at_start(settings: config.Settings) -> None:
    clock = Clock()
    clock.set("2031-07-15T12:00:00Z")
    assert not {203106, 203107, 203110} & await partitioned_months(settings)
    async with app_client(settings, clock):

        async def made() -> bool:
            return {203106, 203107, 203108, 203109, 203110} <= await partitioned_months(settings)

        await eventually(made, within=20, what="the partitions of 2031-06..2031-10")


@pytest.mark.anyio
async def test_a_key_names_one_sale_across_months(settings: config.Settings, clock: Clock) -> None:
    async with app_client(settings, clock) as client:
        first = {"product_id": 2, "store_id": 3, "sold_at": "2026-10-10T10:00:00Z", "idempotency_key": "pos-1"}
        stored = await post(client, first)
        assert stored.status_code == 201, stored.text
        # The same key with an instant of another month (another partition) names another sale: 422.
        other = await post(client, {**first, "sold_at": "2026-11-10T10:00:00Z"})
        assert other.status_code == 422, other.text
        # ... and so does one of a month without a partition (the DEFAULT one).
        assert (await post(client, {**first, "sold_at": "2003-01-01T00:00:00Z"})).status_code == 422
        # The same sale, with or without its instant, is a replay of it.
        for again in (first, {k: v for k, v in first.items() if k != "sold_at"}):
            replay = await post(client, again)
            assert replay.status_code == 200 and replay.json() == stored.json()
        # A keyed sale of the far past is judged the same way.
        old = {**first, "sold_at": "2002-02-02T00:00:00Z", "idempotency_key": "pos-2"}
        assert (await post(client, old)).status_code == 201
        assert (await post(client, old)).status_code == 200
        assert (await post(client, {**old, "quantity": 2})).status_code == 422


@pytest.mark.anyio
@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
async def test_a_worker_prunes_the_keys_that_outlived_their_lifetime(settings: config.Settings, clock: Clock) -> None:
    sale = {"product_id": 1, "store_id": 2, "idempotency_key": "old-key"}
    async with app_client(settings, clock) as client:
        first = await post(client, sale)
        assert first.status_code == 201
    keys = sa.select(sa.func.count()).select_from(db.sale_keys)
    assert await scalar(settings, keys) == 1
    clock.advance(settings.key_lifetime + timedelta(seconds=1))
    async with app_client(settings, clock) as client:

        async def pruned() -> bool:
            left: int = await scalar(settings, keys)
            return left == 0

        await eventually(pruned, within=20, what="the expired key is pruned")
        # The old sale keeps its key as history; the key may name a new sale.
        assert (await client.get(f"/sales/{first.json()['id']}")).json()["idempotency_key"] == "old-key"
        again = await post(client, {**sale, "product_id": 2})
        assert again.status_code == 201 and again.json()["id"] != first.json()["id"]
        assert (await post(client, {**sale, "product_id": 2})).status_code == 200


# --- migration 0005 on a database with data ----------------------------------------

MILLION = int(os.environ.get("SALESREPORT_MIGRATION_SALES", "1000000"))

# A million sales over 24 months of 2025-2026, 50 stores, 500 products, every one keyed; a return
# of every 100th; the rollups as the writer would have left them (slot 0).
_LOAD = f"""
INSERT INTO stores (id, address, timezone) SELECT i, 'Store ' || i, 'UTC' FROM generate_series(1, 50) i;
INSERT INTO products (id, name) SELECT i, 'Product ' || i FROM generate_series(1, 500) i;
INSERT INTO prices (product_id, effective_from, price)
    SELECT i, '2000-01-01T00:00:00Z', 100 + i FROM generate_series(1, 500) i;
INSERT INTO sales (store_id, product_id, quantity, unit_price, amount, sold_at, received_at, month,
                   idempotency_key, catalog_price, returned)
    SELECT 1 + i % 50, 1 + i % 500, 1 + i % 3, 100 + 1 + i % 500, (1 + i % 3) * (100 + 1 + i % 500),
           t, t, extract(year FROM t)::int * 100 + extract(month FROM t)::int, 'k' || i, 100 + 1 + i % 500,
           CASE WHEN i % 100 = 0 THEN 1 ELSE 0 END
    FROM generate_series(1, {MILLION}) i,
         LATERAL (SELECT '2025-01-01T00:00:00Z'::timestamptz + (i % 730) * interval '1 day'
                         + (i % 86400) * interval '1 second') w(t);
INSERT INTO returns (sale_id, store_id, product_id, quantity, unit_price, amount, returned_at, received_at,
                     month, idempotency_key)
    SELECT id, store_id, product_id, 1, unit_price, unit_price, sold_at, sold_at, month, 'r' || id
    FROM sales WHERE returned = 1;
INSERT INTO store_month (store_id, month, slot, revenue, sales, refunds, discounts)
    SELECT store_id, month, 0, sum(revenue), sum(sales), sum(refunds), 0 FROM (
        SELECT store_id, month, amount AS revenue, 1 AS sales, 0 AS refunds FROM sales
        UNION ALL SELECT store_id, month, -amount, 0, amount FROM returns) t GROUP BY store_id, month;
INSERT INTO product_month (product_id, month, slot, quantity, returned, revenue)
    SELECT product_id, month, 0, sum(q), sum(r), sum(v) FROM (
        SELECT product_id, month, quantity AS q, 0 AS r, amount AS v FROM sales
        UNION ALL SELECT product_id, month, -quantity, quantity, -amount FROM returns) t GROUP BY product_id, month;
INSERT INTO product_total (product_id, slot, quantity, returned, revenue)
    SELECT product_id, 0, sum(quantity), sum(returned), sum(revenue) FROM product_month GROUP BY product_id;
INSERT INTO store_product_month (store_id, product_id, month, slot, quantity, returned, revenue)
    SELECT store_id, product_id, month, 0, sum(q), sum(r), sum(v) FROM (
        SELECT store_id, product_id, month, quantity AS q, 0 AS r, amount AS v FROM sales
        UNION ALL SELECT store_id, product_id, month, -quantity, quantity, -amount FROM returns) t
    GROUP BY store_id, product_id, month;
ANALYZE;
"""


def _alembic(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(ROOT / "salesreport" / "migrations"))
    cfg.set_main_option("sqlalchemy.url", config.async_url(url))
    return cfg


def test_migration_0005_partitions_a_million_sales(pg_cluster: pg.Cluster, tmp_path: Path) -> None:
    pg_cluster.psql("DROP DATABASE IF EXISTS migration")
    pg_cluster.psql("CREATE DATABASE migration")
    url = pg_cluster.url("migration")
    cfg = _alembic(url)
    command.upgrade(cfg, "0004")
    pg_cluster.psql(_LOAD, "migration")
    started = time.perf_counter()
    command.upgrade(cfg, "head")
    elapsed = time.perf_counter() - started
    print(f"\nmigration 0005: {MILLION:,} sales in {elapsed:.1f} s ({elapsed / MILLION * 1e6:.1f} s per million)")

    async def inspect() -> tuple[bool, int, int, set[int], int]:
        settings = replace(config.load(), database_url=config.async_url(url))
        database = db.connect(settings)
        try:
            async with database.reader.connect() as conn:
                kind = await partitions.partitioned(conn)
                count = int(await conn.scalar(sa.text("SELECT count(*) FROM sales")) or 0)
                keys = int(await conn.scalar(sa.text("SELECT count(*) FROM sale_keys")) or 0)
                months = await partitions.months_with_partitions(conn)
                in_default = int(await conn.scalar(sa.text("SELECT count(*) FROM sales_default")) or 0)
                return kind, count, keys, months, in_default
        finally:
            await database.dispose()

    kind, count, keys, months, in_default = asyncio.run(inspect())
    assert (kind, count, keys, in_default) == (True, MILLION, MILLION, 0)
    assert {202501, 202612} <= months
    done = cli(url, "check")
    assert done.returncode == 0, done.stdout + done.stderr
    asyncio.run(_serve_after_migration(url))
    # Archiving the first month (1/24 of the sales) drops its partition.
    started = time.perf_counter()
    done = cli(url, "archive", "--before", "2025-02", "--to", str(tmp_path))
    elapsed = time.perf_counter() - started
    assert done.returncode == 0, done.stderr
    print(f"archive of 2025-01: {done.stdout.splitlines()[0]} in {elapsed:.1f} s")
    assert cli(url, "check").returncode == 0
    pg_cluster.psql("DROP DATABASE migration")


async def _serve_after_migration(url: str) -> None:
    """A key stored before the migration still names its sale; new sales take ids after the old ones."""
    settings = replace(config.load(), database_url=config.async_url(url), log_format="console")
    clock = Clock()
    clock.set("2027-01-01T12:00:00Z")  # sale i = 729 was received 2026-12-31T00:12:09Z: its key lives
    app = create_app(settings, clock=clock)
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1") as client:
            old = {"product_id": 230, "store_id": 30, "quantity": 1, "idempotency_key": "k729"}
            replay = await post(client, old)
            assert replay.status_code == 200, replay.text
            assert replay.json()["sold_at"] == "2026-12-31T00:12:09Z"
            assert (await post(client, {**old, "quantity": 2})).status_code == 422
            new = await post(client, {**old, "idempotency_key": "new-1"})
            assert new.status_code == 201, new.text
            assert new.json()["id"] > MILLION
