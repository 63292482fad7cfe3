"""Fixtures: every API test runs on SQLite and on a throwaway PostgreSQL.

No test reads the wall clock: the app's "now" is the ``clock`` fixture (fixed at ``NOW`` unless a
test sets it), and a test waiting for something to happen polls for it with ``eventually``.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import shutil
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar, overload

import httpx
import pytest
import sqlalchemy as sa

from salesreport import config, db
from salesreport.api import create_app
from tests import pg

ROOT = Path(__file__).resolve().parent.parent
ENABLE_PG = (
    "PostgreSQL tests skipped: no initdb/pg_ctl found. Install the server "
    "(Debian: apt-get install postgresql) or put its bin directory on PATH."
)


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    return "asyncio"


def migrate(url: str) -> None:
    env = {**os.environ, "DATABASE_URL": url}
    subprocess.run([sys.executable, "-m", "salesreport", "migrate"], cwd=ROOT, env=env, check=True, capture_output=True)


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[pg.Cluster]:
    bindir = pg.find_bindir()
    if bindir is None:
        if os.environ.get("CI") == "true":
            pytest.fail(ENABLE_PG)
        pytest.skip(ENABLE_PG)
    cluster = pg.create(bindir)
    try:
        cluster.psql("CREATE DATABASE salesreport")
        migrate(cluster.url("salesreport"))
        yield cluster
    finally:
        pg.destroy(cluster)


ENABLE_PGBOUNCER = (
    "PgBouncer tests skipped: no pgbouncer found. Install it (Debian: apt-get install pgbouncer) or put it on PATH."
)


@pytest.fixture(scope="session")
def pgbouncer(pg_cluster: pg.Cluster) -> Iterator[pg.Bouncer]:
    """PgBouncer in transaction pooling mode in front of the throwaway cluster, four server connections per pool."""
    binary = pg.find_pgbouncer()
    if binary is None:
        if os.environ.get("CI") == "true":
            pytest.fail(ENABLE_PGBOUNCER)
        pytest.skip(ENABLE_PGBOUNCER)
    bouncer = pg.start_bouncer(binary, pg_cluster)
    try:
        yield bouncer
    finally:
        pg.stop_bouncer(bouncer)


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("template") / "template.db"
    migrate(f"sqlite:///{path}")
    return path


TABLES = ", ".join(t.name for t in db.metadata.sorted_tables)


@pytest.fixture(params=["sqlite", "postgresql", "pgbouncer"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A migrated, empty database of each kind; ``pgbouncer`` is PostgreSQL through PgBouncer in
    transaction pooling mode, for the modules that set ``THROUGH_PGBOUNCER = True`` only."""
    if request.param == "sqlite":
        path = tmp_path / "sales.db"
        shutil.copy(request.getfixturevalue("sqlite_template"), path)
        return f"sqlite:///{path}"
    cluster: pg.Cluster = request.getfixturevalue("pg_cluster")
    cluster.psql(f"TRUNCATE {TABLES} RESTART IDENTITY", "salesreport")
    if request.param == "pgbouncer":
        bouncer: pg.Bouncer = request.getfixturevalue("pgbouncer")
        return bouncer.url("salesreport")
    return cluster.url("salesreport")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The PgBouncer variant of ``database_url`` runs for the modules that ask for it: the whole suite
    through PgBouncer as well would take half as long again."""
    keep: list[pytest.Item] = []
    drop: list[pytest.Item] = []
    for item in items:
        params = getattr(item, "callspec", None)
        through = params is not None and params.params.get("database_url") == "pgbouncer"
        wanted = getattr(getattr(item, "module", None), "THROUGH_PGBOUNCER", False)
        (drop if through and not wanted else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


@pytest.fixture
def settings(database_url: str) -> config.Settings:
    base = config.load()
    return replace(base, database_url=config.async_url(database_url), default_timezone="UTC", log_format="console")


STORES: list[dict[str, Any]] = [
    {"id": 1, "address": "1 Red Square, Moscow", "timezone": "Europe/Moscow"},
    {"id": 2, "address": "5 Svetlanskaya, Vladivostok", "timezone": "Asia/Vladivostok"},
    {"id": 3, "address": "350 5th Ave, New York", "timezone": "America/New_York"},
    {"id": 4, "address": "Alexanderplatz 1, Berlin", "timezone": "Europe/Berlin"},
]
PRODUCTS: list[dict[str, Any]] = [
    {"id": 1, "name": "Milk", "price": 10},  # 0.10
    {"id": 2, "name": "Bread", "price": 4550},  # 45.50
    {"id": 3, "name": "Coffee", "price": 123456},  # 1234.56
    {"id": 9_000_000_000_000_000_000, "name": "Big id", "price": 1},
]


async def seed(settings: config.Settings, products: list[dict[str, Any]], stores: list[dict[str, Any]]) -> None:
    database = db.connect(settings)
    try:
        async with database.writer.begin() as conn:
            await db.save_catalog(conn, products, stores, effective=NOW)
    finally:
        await database.dispose()


# The app's "now" unless a test sets the clock: mid-month, at noon UTC, far from a month's end
# and from a DST change in every store's zone, so that "now" is in the same month everywhere.
NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)


class Clock:
    """A settable clock for ``create_app(clock=...)``: it shows one instant until a test moves it."""

    now: datetime

    def __init__(self, now: datetime = NOW) -> None:
        self.set(now)

    def __call__(self) -> datetime:
        return self.now

    def set(self, instant: datetime | str) -> datetime:
        """Stop the clock at ``instant`` (aware, or RFC 3339 text such as ``"2026-11-30T23:31:00Z"``)."""
        if isinstance(instant, str):
            instant = datetime.fromisoformat(instant)
        if instant.utcoffset() is None:
            raise ValueError(f"the clock shows aware instants only, not {instant!r}")
        self.now = instant.astimezone(UTC)
        return self.now

    def advance(self, by: timedelta = timedelta(0), **kwargs: float) -> datetime:
        """Move the clock on: ``clock.advance(timedelta(minutes=1))`` or ``clock.advance(seconds=30)``."""
        return self.set(self.now + by + timedelta(**kwargs))


@pytest.fixture
def clock() -> Clock:
    """The app's clock (see ``client``), at ``NOW`` until the test sets or advances it."""
    return Clock()


@contextlib.asynccontextmanager
async def app_client(settings: config.Settings, clock: Clock) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client on the real ASGI app with ``clock``, its lifespan run, the catalog seeded."""
    await seed(settings, PRODUCTS, STORES)
    app = create_app(settings, clock=clock)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as http:
            http.app = app  # type: ignore[attr-defined]
            yield http


@pytest.fixture
async def client(settings: config.Settings, clock: Clock) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client on the real ASGI app, its lifespan run, the catalog seeded; its "now" is ``clock``."""
    async with app_client(settings, clock) as http:
        yield http


T = TypeVar("T")


@overload
async def eventually(
    predicate: Callable[[], Awaitable[T | None]], within: float = 5.0, *, every: float = 0.005, what: str = ""
) -> T: ...


@overload
async def eventually(
    predicate: Callable[[], T | None], within: float = 5.0, *, every: float = 0.005, what: str = ""
) -> T: ...


async def eventually(
    predicate: Callable[[], object], within: float = 5.0, *, every: float = 0.005, what: str = ""
) -> object:
    """Poll ``predicate`` (a function or a coroutine function) until it returns something true, and return that.

    It is called every ``every`` seconds; if it is still false after ``within`` seconds, the test fails,
    saying ``what`` it waited for and the last value. The deadline only bounds a failure: a test passes
    as soon as the event happens, however slow or fast the machine.
    """
    deadline = time.monotonic() + within
    while True:
        value = predicate()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if time.monotonic() >= deadline:
            name = what or getattr(predicate, "__qualname__", repr(predicate))
            raise AssertionError(f"still not so after {within:g} s: {name} (last: {value!r})")
        await asyncio.sleep(every)


async def scalar(settings: config.Settings, query: Any) -> Any:
    database = db.connect(settings)
    try:
        async with database.reader.connect() as conn:
            return await conn.scalar(query)
    finally:
        await database.dispose()


async def count_sales(settings: config.Settings) -> int:
    return int(await scalar(settings, sa.select(sa.func.count()).select_from(db.sales)))


def http_scope(method: str, path: str, headers: list[tuple[bytes, bytes]], query: bytes = b"") -> dict[str, Any]:
    """The ASGI scope of a request from a loopback client, for a test that drives the app's messages itself."""
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": query,
        "headers": headers,
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 80),
    }
