"""Fixtures: every API test runs on SQLite and on a throwaway PostgreSQL."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

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


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("template") / "template.db"
    migrate(f"sqlite:///{path}")
    return path


TABLES = ", ".join(t.name for t in db.metadata.sorted_tables)


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A migrated, empty database of each kind."""
    if request.param == "sqlite":
        path = tmp_path / "sales.db"
        shutil.copy(request.getfixturevalue("sqlite_template"), path)
        return f"sqlite:///{path}"
    cluster: pg.Cluster = request.getfixturevalue("pg_cluster")
    cluster.psql(f"TRUNCATE {TABLES} RESTART IDENTITY", "salesreport")
    return cluster.url("salesreport")


@pytest.fixture
def settings(database_url: str) -> config.Settings:
    base = config.load()
    return replace(base, database_url=config.async_url(database_url), default_timezone="UTC", log_format="console")


STORES = [
    {"id": 1, "address": "1 Red Square, Moscow", "timezone": "Europe/Moscow"},
    {"id": 2, "address": "5 Svetlanskaya, Vladivostok", "timezone": "Asia/Vladivostok"},
    {"id": 3, "address": "350 5th Ave, New York", "timezone": "America/New_York"},
    {"id": 4, "address": "Alexanderplatz 1, Berlin", "timezone": "Europe/Berlin"},
]
PRODUCTS = [
    {"id": 1, "name": "Milk", "price": 10},  # 0.10
    {"id": 2, "name": "Bread", "price": 4550},  # 45.50
    {"id": 3, "name": "Coffee", "price": 123456},  # 1234.56
    {"id": 9_000_000_000_000_000_000, "name": "Big id", "price": 1},
]


async def seed(settings: config.Settings, products: list[dict[str, Any]], stores: list[dict[str, Any]]) -> None:
    database = db.connect(settings)
    try:
        async with database.writer.begin() as conn:
            await db.save_catalog(conn, products, stores)
    finally:
        await database.dispose()


@pytest.fixture
async def client(settings: config.Settings) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client on the real ASGI app, its lifespan run, the catalog seeded."""
    await seed(settings, PRODUCTS, STORES)
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            http.app = app  # type: ignore[attr-defined]
            yield http


async def scalar(settings: config.Settings, query: Any) -> Any:
    database = db.connect(settings)
    try:
        async with database.reader.connect() as conn:
            return await conn.scalar(query)
    finally:
        await database.dispose()


async def count_sales(settings: config.Settings) -> int:
    return int(await scalar(settings, sa.select(sa.func.count()).select_from(db.sales)))
