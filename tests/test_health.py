"""Readiness says why it is not ready; errors are told apart (unreachable: 503; a bug or a missing table: 500)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import asyncpg
import httpx
import pytest
import sqlalchemy as sa

from salesreport import config
from salesreport.api import create_app
from tests import pg
from tests.conftest import PRODUCTS, STORES, Clock, app_client, count_sales, eventually, migrate, seed
from tests.test_api import assert_problem

pytestmark = pytest.mark.anyio

JSON = {"content-type": "application/json"}


@pytest.fixture
async def bare(request: pytest.FixtureRequest, settings: config.Settings, tmp_path: Path) -> config.Settings:
    """Settings for a database that exists but was never migrated."""
    if settings.is_sqlite:
        return replace(settings, database_url=config.async_url(f"sqlite:///{tmp_path / 'bare.db'}"))
    cluster: pg.Cluster = request.getfixturevalue("pg_cluster")
    cluster.psql("DROP DATABASE IF EXISTS bare")
    cluster.psql("CREATE DATABASE bare")
    return replace(settings, database_url=config.async_url(cluster.url("bare")))


async def test_an_unmigrated_database_is_not_ready_and_its_errors_are_500(bare: config.Settings) -> None:
    app = create_app(bare, clock=Clock())
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app, raise_app_exceptions=False), base_url="http://127.0.0.1"
        ) as client:
            ready = await client.get("/health/ready")
            assert ready.status_code == 503
            assert "run migrate" in ready.json()["reason"]
            assert (await client.get("/health/live")).status_code == 200
            # A missing table is a fault of the deployment, not a database that is away: 500, no Retry-After.
            products = await client.get("/products")
            body = assert_problem(products, 500)
            assert "retry-after" not in products.headers
            assert "table" not in body["detail"]  # the database's words stay in the log


async def test_a_catalog_that_cannot_load_is_not_ready(settings: config.Settings, clock: Clock) -> None:
    async with app_client(settings, clock) as client:
        assert (await client.get("/health/ready")).status_code == 200
        await execute(settings, "ALTER TABLE stores RENAME TO stores_elsewhere")
        await execute(settings, "UPDATE versions SET version = version + 1 WHERE name = 'catalog'")
        await noticed(client)
        ready = await client.get("/health/ready")
        assert ready.status_code == 503
        assert "catalog" in ready.json()["reason"]
        await execute(settings, "ALTER TABLE stores_elsewhere RENAME TO stores")
        assert (await client.get("/health/ready")).status_code == 200


async def test_a_writer_that_cannot_write_answers_503_in_time_and_ready_says_so(
    settings: config.Settings, clock: Clock
) -> None:
    """Another process holds the database: the POST gets 503 at its deadline, the
    sale is then written all or nothing, and the retry is answered as a replay."""
    sale = {"product_id": 1, "store_id": 1, "idempotency_key": "held-up"}
    async with app_client(replace(settings, write_timeout=0.5), clock) as client, holding_the_writer(settings):
        response = await client.post("/sales", content=json.dumps(sale), headers=JSON)
        assert_problem(response, 503)
        assert response.headers["retry-after"]
        if settings.is_sqlite:
            ready = await client.get("/health/ready")
            assert ready.status_code == 503, ready.text
            assert "did not answer" in ready.json()["reason"]
    async with app_client(settings, clock) as client:
        retried = await client.post("/sales", content=json.dumps(sale), headers=JSON)
        assert retried.status_code in (200, 201), retried.text
        assert (await client.post("/sales", content=json.dumps(sale), headers=JSON)).status_code == 200
    assert await count_sales(settings) == 1


async def test_a_writer_task_that_dies_is_started_again(client: httpx.AsyncClient) -> None:
    batcher = client.app.state.service.batcher  # type: ignore[attr-defined]
    assert batcher._task is not None
    batcher._task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await batcher._task
    assert batcher.running and batcher.restarts == 1
    response = await client.post("/sales", content=json.dumps({"product_id": 1, "store_id": 1}), headers=JSON)
    assert response.status_code == 201
    assert (await client.get("/health/ready")).status_code == 200


# --- helpers ---------------------------------------------------------------------


def _plain(settings: config.Settings) -> str:
    return settings.database_url.replace("sqlite+aiosqlite:///", "").replace("postgresql+asyncpg", "postgresql")


async def execute(settings: config.Settings, sql: str) -> None:
    if settings.is_sqlite:
        with sqlite3.connect(_plain(settings)) as conn:
            conn.execute(sql)
        return
    conn = await asyncpg.connect(_plain(settings))
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def noticed(client: httpx.AsyncClient) -> None:
    """Wait until the app's worker has noticed that the catalog changed (on PostgreSQL at its next read of the
    change counters, within ``changes.BOUND``; SQLite workers read the counter on every look)."""
    catalog = client.app.state.service.catalog  # type: ignore[attr-defined]
    await eventually(lambda: catalog.changes.stale("catalog", catalog.version), what="the catalog change is noticed")


class holding_the_writer:
    """Another process takes the write lock (SQLite) or locks the sales table (PostgreSQL) until exit."""

    def __init__(self, settings: config.Settings) -> None:
        self.settings = settings

    async def __aenter__(self) -> None:
        if self.settings.is_sqlite:
            self.sqlite = sqlite3.connect(_plain(self.settings), isolation_level=None, check_same_thread=False)
            self.sqlite.execute("BEGIN IMMEDIATE")
        else:
            self.pg = await asyncpg.connect(_plain(self.settings))
            self.transaction = self.pg.transaction()
            await self.transaction.start()
            await self.pg.execute("LOCK TABLE sales IN ACCESS EXCLUSIVE MODE")

    async def __aexit__(self, *_: object) -> None:
        if self.settings.is_sqlite:
            self.sqlite.execute("ROLLBACK")
            self.sqlite.close()
        else:
            await self.transaction.rollback()
            await self.pg.close()


@pytest.mark.parametrize(
    ("error", "unavailable"),
    [
        (sqlite3.OperationalError("database is locked"), True),
        (sqlite3.OperationalError("database or disk is full"), True),
        (sqlite3.OperationalError("unable to open database file"), True),
        (sqlite3.OperationalError("no such table: sales"), False),
        (sqlite3.OperationalError('near "SELEC": syntax error'), False),
        (ConnectionRefusedError(111, "refused"), True),
        (TimeoutError(), True),
        (ValueError("a bug"), False),
    ],
)
def test_only_errors_of_reaching_the_database_are_unavailable(error: Exception, unavailable: bool) -> None:
    from salesreport import db

    assert db.is_unavailable(error) is unavailable
    wrapped = sa.exc.OperationalError("SELECT 1", {}, error)
    assert db.is_unavailable(wrapped) is unavailable


async def test_a_read_only_postgresql_is_not_ready_and_sales_get_503(settings: config.Settings, clock: Clock) -> None:
    """What a primary looks like after a failover that left it a standby, or set read-only."""
    if settings.is_sqlite:
        pytest.skip("PostgreSQL only")
    await seed(settings, PRODUCTS, STORES)
    name = sa.engine.make_url(settings.database_url).database
    await execute(settings, f"ALTER DATABASE {name} SET default_transaction_read_only = on")
    try:
        app = create_app(settings, clock=clock)
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1") as client,
        ):
            ready = await client.get("/health/ready")
            assert ready.status_code == 503
            assert "read-only" in ready.json()["reason"]
            response = await client.post("/sales", content=json.dumps({"product_id": 1, "store_id": 1}), headers=JSON)
            assert_problem(response, 503)
    finally:
        conn = await asyncpg.connect(_plain(settings), server_settings={"default_transaction_read_only": "off"})
        try:
            await conn.execute(f"ALTER DATABASE {name} RESET default_transaction_read_only")
        finally:
            await conn.close()
    assert await count_sales(settings) == 0


@pytest.fixture
async def refusing(request: pytest.FixtureRequest, settings: config.Settings) -> AsyncIterator[config.Settings]:
    """Settings (PostgreSQL's) for a migrated, seeded database of its own, which the test may make refuse
    connections (``refuse``); it accepts them again, and is dropped, at the end."""
    cluster: pg.Cluster = request.getfixturevalue("pg_cluster")
    cluster.psql("DROP DATABASE IF EXISTS refusing")
    cluster.psql("CREATE DATABASE refusing")
    migrate(cluster.url("refusing"))
    own = replace(settings, database_url=config.async_url(cluster.url("refusing")))
    await seed(own, PRODUCTS, STORES)
    yield own
    cluster.psql("ALTER DATABASE refusing ALLOW_CONNECTIONS true")
    cluster.psql("DROP DATABASE refusing WITH (FORCE)")


async def refuse(cluster: pg.Cluster) -> None:
    """The database ``refusing`` takes no new connection (SQLSTATE 55000), and the ones open are closed."""
    cluster.psql("ALTER DATABASE refusing ALLOW_CONNECTIONS false")
    cluster.psql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = 'refusing'")

    async def closed() -> bool:
        conn = await asyncpg.connect(cluster.url())
        try:
            left: int = await conn.fetchval("SELECT count(*) FROM pg_stat_activity WHERE datname = 'refusing'")
            return left == 0
        finally:
            await conn.close()

    await eventually(closed, what="the database's connections are closed")


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
async def test_an_error_while_connecting_is_unavailable_and_the_same_sqlstate_from_a_statement_is_not(
    refusing: config.Settings, pg_cluster: pg.Cluster
) -> None:
    from salesreport import db

    database = db.connect(refusing)
    try:
        async with database.reader.connect() as conn:
            with pytest.raises(sa.exc.DBAPIError) as statement:
                await conn.execute(sa.text("SELECT currval('sales_id_seq')"))  # not yet defined in this session
        await refuse(pg_cluster)
        with pytest.raises(sa.exc.DBAPIError) as connecting:
            async with database.writer.connect():
                pass
    finally:
        await database.dispose()
    assert db.sqlstate(statement.value) == db.sqlstate(connecting.value) == "55000"
    assert not db.is_unavailable(statement.value)  # a bug: a 500
    assert db.is_unavailable(connecting.value)  # the database refuses this service now: a 503


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
async def test_a_database_that_refuses_connections_gets_503_and_ready_says_unreachable(
    refusing: config.Settings, pg_cluster: pg.Cluster, clock: Clock
) -> None:
    sale = json.dumps({"product_id": 1, "store_id": 1, "idempotency_key": "till-1-1"})
    async with app_client(refusing, clock) as client:
        assert (await client.get("/health/ready")).status_code == 200
        await refuse(pg_cluster)
        for _ in range(2):  # the pools' connections found closed, then new ones refused
            posted = await client.post("/sales", content=sale, headers=JSON)
            assert_problem(posted, 503)
            assert posted.headers["retry-after"] == "2"
            report = await client.get("/reports/top-stores", params={"month": "2026-03"})
            assert_problem(report, 503)
            assert "retry-after" in report.headers
        ready = await client.get("/health/ready")
        assert ready.status_code == 503
        assert ready.json()["reason"] == "the database cannot be read: unreachable"
        pg_cluster.psql("ALTER DATABASE refusing ALLOW_CONNECTIONS true")
        assert (await client.get("/health/ready")).status_code == 200
        assert (await client.post("/sales", content=sale, headers=JSON)).status_code == 201
    assert await count_sales(refusing) == 1


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
async def test_a_driver_error_while_connecting_is_a_fault_not_unavailable(
    refusing: config.Settings, pg_cluster: pg.Cluster
) -> None:
    """asyncpg refusing a DATABASE_URL it cannot use (an error with no SQLSTATE: not the database's) is a
    fault of the deployment, a 500, while the database's own refusal is a 503."""
    from salesreport import db
    from salesreport.db.engines import postgres_engine

    engine = postgres_engine(refusing.database_url + "?ssl=bogus", 1)
    try:
        with pytest.raises(sa.exc.DBAPIError) as misconfigured:
            async with engine.connect():
                pass
    finally:
        await engine.dispose()
    assert db.sqlstate(misconfigured.value) is None
    assert not db.is_unavailable(misconfigured.value)


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
async def test_the_writers_connections_closed_while_held_cost_no_sale_once_the_database_is_back(
    refusing: config.Settings, pg_cluster: pg.Cluster, clock: Clock
) -> None:
    """The database restarted (or ended the backends) between two requests: the connections the batchers
    hold, and those in the pools, are closed. The next requests take new ones rather than failing on the
    dead ones (a 503 for a database that is back)."""
    async with app_client(refusing, clock) as client:
        first = {"product_id": 1, "store_id": 1}
        assert (await client.post("/sales", json=first)).status_code == 201
        assert (await client.post("/returns", json={"sale_id": 1})).status_code == 201
        assert (await client.get("/sales/1")).status_code == 200
        database = client.app.state.service.db  # type: ignore[attr-defined]
        assert database.held
        await refuse(pg_cluster)
        pg_cluster.psql("ALTER DATABASE refusing ALLOW_CONNECTIONS true")
        held = list(database.held)
        await eventually(lambda: all(raw.is_closed() for _, raw, _ in held), what="the held connections closed")
        assert (await client.get("/sales/1")).status_code == 200  # a reader from the pool
        assert (await client.get("/health/ready")).status_code == 200
        assert (await client.post("/sales", json=first)).status_code == 201
        assert (await client.post("/returns", json={"sale_id": 2})).status_code == 201
    assert await count_sales(refusing) == 2


async def test_a_broken_sqlite_writer_connection_is_replaced(
    client: httpx.AsyncClient, settings: config.Settings
) -> None:
    if not settings.is_sqlite:
        pytest.skip("SQLite's writer thread only")
    writer = client.app.state.service.db.sqlite_writer  # type: ignore[attr-defined]
    await client.post("/sales", content=json.dumps({"product_id": 1, "store_id": 1}), headers=JSON)
    writer._conn.close()  # as an I/O fault would leave it
    transport = httpx.ASGITransport(app=client.app, raise_app_exceptions=False)  # type: ignore[attr-defined]
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as loose:
        first = await loose.post("/sales", content=json.dumps({"product_id": 1, "store_id": 1}), headers=JSON)
    assert first.status_code in (500, 503)
    second = await client.post("/sales", content=json.dumps({"product_id": 1, "store_id": 1}), headers=JSON)
    assert second.status_code == 201
    assert (await client.get("/health/ready")).status_code == 200
    assert await count_sales(settings) == 2


async def test_concurrent_readiness_probes_share_one(client: httpx.AsyncClient) -> None:
    batcher = client.app.state.service.batcher  # type: ignore[attr-defined]
    probe, runs = batcher.probe, []

    async def counted() -> None:
        runs.append(1)
        await probe()

    batcher.probe = counted
    answers = await asyncio.gather(*(client.get("/health/ready") for _ in range(30)))
    assert all(a.status_code == 200 for a in answers)
    assert 1 <= len(runs) < 30


class Relay:
    """A TCP relay to PostgreSQL that can be slow to pass a closing on: what the server sends reaches the
    client at once, but while ``holding`` the server's end of a connection (a backend ended) is passed on
    only at ``release()``, as over a network that delivers the last bytes before the FIN."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.holding = False
        self.alive: set[int] = set()  # the connections the server has not ended, by number
        self.ended: set[int] = set()  # those it ended, whose end the client has not been told yet
        self._count = 0
        self._released = asyncio.Event()
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> Relay:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *_: object) -> None:
        self.release()
        assert self._server is not None
        self._server.close()

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    def release(self) -> None:
        self._released.set()

    async def _relay(self, client_in: asyncio.StreamReader, client_out: asyncio.StreamWriter) -> None:
        server_in, server_out = await asyncio.open_connection(*self.target)
        self._count += 1
        number = self._count
        self.alive.add(number)

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter, from_server: bool) -> None:
            with contextlib.suppress(ConnectionError):
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            if from_server:
                self.alive.discard(number)
                if self.holding:
                    self.ended.add(number)
                    await self._released.wait()
            sink.close()

        await asyncio.gather(pipe(client_in, server_out, False), pipe(server_in, client_out, True))


@contextlib.asynccontextmanager
async def _released_at_exit(relay: Relay) -> AsyncIterator[None]:
    try:
        yield
    finally:
        relay.release()  # before the app closes its connections, which waits for their ends


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
async def test_a_connection_the_database_ended_is_503_until_it_is_gone(
    settings: config.Settings, clock: Clock, pg_cluster: pg.Cluster
) -> None:
    """A backend ended (a restart, ``pg_terminate_backend``) sends its client an error before it closes the
    connection; a batch that takes the connection in between is told the database is away (503), not a 500,
    and the next batch after the close gets a new connection."""
    url = sa.engine.make_url(settings.database_url)
    async with Relay((url.host or "127.0.0.1", url.port or 5432)) as relay:
        relayed = replace(settings, database_url=url.set(port=relay.port).render_as_string(hide_password=False))
        async with app_client(relayed, clock) as client, _released_at_exit(relay):
            first = await client.post("/sales", content=json.dumps({"product_id": 1, "store_id": 1}), headers=JSON)
            assert first.status_code == 201, first.text  # the batcher keeps its connection for the next batch
            relay.holding = True
            open_before = set(relay.alive)
            pg_cluster.psql(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = 'salesreport' AND pid <> pg_backend_pid()"
            )
            await eventually(lambda: relay.ended >= open_before, what="the backends ended")
            await asyncio.sleep(0)  # the service's turn to read what the relay passed on
            sale = {"product_id": 2, "store_id": 1, "idempotency_key": "after-the-end"}
            response = await client.post("/sales", content=json.dumps(sale), headers=JSON)
            assert_problem(response, 503)
            assert response.headers["retry-after"]
            relay.release()

            async def stored() -> bool:
                retry = await client.post("/sales", content=json.dumps(sale), headers=JSON)
                assert retry.status_code in (201, 503), retry.text
                return retry.status_code == 201

            await eventually(stored, what="the sale is stored once the connections are closed")
    assert await count_sales(settings) == 2
