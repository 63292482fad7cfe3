"""``archive`` (old months to gzip CSV, out of the database, the reports unchanged) and backups:
SQLite's ``backup`` while a writer commits, PostgreSQL's pg_dump restored into a new database."""

from __future__ import annotations

import asyncio
import csv
import gzip
import hashlib
import os
import sys
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import sqlalchemy as sa

from salesreport import archive, config, db
from tests import pg
from tests.conftest import NOW, ROOT, Clock, app_client, count_sales, scalar
from tests.test_api import assert_problem
from tests.test_cli import cli

pytestmark = pytest.mark.anyio


async def post(client: httpx.AsyncClient, path: str, body: object) -> Any:
    response = await asyncio.wait_for(client.post(path, json=body), 10)
    assert response.status_code == 201, response.text
    return response.json()


def plain(settings: config.Settings) -> str:
    return settings.database_url.replace("+asyncpg", "").replace("+aiosqlite", "")


async def reports(client: httpx.AsyncClient) -> list[Any]:
    got = []
    for month in ("2025-08", "2025-09", "2025-10"):
        got.append((await client.get("/reports/top-stores", params={"month": month})).json())
        got.append((await client.get("/reports/top-products", params={"month": month})).json())
        got.append((await client.get("/stores/1", params={"month": month})).status_code)
    got.append((await client.get("/reports/top-products")).json())
    got.append((await client.get("/reports/revenue-by-month", params={"until": "2025-10", "months": 4})).json())
    return got


def read_csv(path: Path) -> list[list[str]]:
    with gzip.open(path, "rt", encoding="utf-8", newline="") as f:
        return list(csv.reader(f))


AUGUST_31 = {"product_id": 2, "store_id": 3, "quantity": 2, "sold_at": "2025-08-31T23:00:00Z"}


async def test_archive_moves_old_months_to_files_and_keeps_the_reports(
    settings: config.Settings, clock: Clock, tmp_path: Path
) -> None:
    url = plain(settings)
    clock.set("2025-10-15T12:00:00Z")  # received long ago: every key has expired when the archive runs
    async with app_client(settings, clock) as client:
        august = [
            await post(client, "/sales", {"product_id": 1, "store_id": 1, "sold_at": "2025-08-10T10:00:00Z"}),
            await post(client, "/sales", {**AUGUST_31, "idempotency_key": "aug-2"}),
        ]
        september = await post(client, "/sales", {"product_id": 3, "store_id": 2, "sold_at": "2025-09-05T10:00:00Z"})
        kept = await post(client, "/sales", {"product_id": 2, "store_id": 1, "sold_at": "2025-10-01T10:00:00Z"})
        # Returns of an August sale: one in August, one in October (a month that stays).
        await post(client, "/returns", {"sale_id": august[1]["id"], "returned_at": "2025-08-31T23:30:00Z"})
        await post(client, "/returns", {"sale_id": august[1]["id"], "returned_at": "2025-10-02T10:00:00Z"})
        await post(client, "/returns", {"sale_id": kept["id"], "returned_at": "2025-10-03T10:00:00Z"})
        before = await reports(client)

        done = cli(url, "archive", "--before", "2025-10", "--to", str(tmp_path / "archive"))
        assert done.returncode == 0, done.stderr
        assert "2 months archived before 2025-10" in done.stdout

        # One gzip CSV of sales and one of their returns per month, with a header row, and their checksums.
        files = sorted(p.name for p in (tmp_path / "archive").iterdir())
        assert files == [
            "2025-08.sha256",
            "2025-09.sha256",
            "returns-2025-08.csv.gz",
            "returns-2025-09.csv.gz",
            "sales-2025-08.csv.gz",
            "sales-2025-09.csv.gz",
        ]
        rows = read_csv(tmp_path / "archive" / "sales-2025-08.csv.gz")
        assert rows[0] == [c.name for c in db.sales.columns]
        assert [int(r[0]) for r in rows[1:]] == [s["id"] for s in august]
        assert rows[2][rows[0].index("idempotency_key")] == "aug-2"
        assert rows[2][rows[0].index("sold_at")] == "2025-08-31T23:00:00+00:00"
        returns = read_csv(tmp_path / "archive" / "returns-2025-08.csv.gz")
        assert returns[0] == [c.name for c in db.returns.columns] and len(returns) == 3  # both returns of the sale
        assert len(read_csv(tmp_path / "archive" / "returns-2025-09.csv.gz")) == 1  # the header alone
        for line in (tmp_path / "archive" / "2025-08.sha256").read_text().splitlines():
            digest, name = line.split("  ")
            assert hashlib.sha256((tmp_path / "archive" / name).read_bytes()).hexdigest() == digest

        # The sales are gone, the reports are what they were, and check knows why.
        assert await count_sales(settings) == 1
        assert (await client.get(f"/sales/{september['id']}")).status_code == 404
        assert await reports(client) == before
        checked = cli(url, "check")
        assert checked.returncode == 0, checked.stdout
        assert "2 months archived (2025-08, 2025-09)" in checked.stdout
        # check --repair rebuilds the rollups with the archived sums: the reports stay.
        assert cli(url, "check", "--repair").returncode == 0
        assert await reports(client) == before

        # A return of an archived sale finds no sale.
        refused = await client.post("/returns", json={"sale_id": september["id"]})
        assert assert_problem(refused, 422)["errors"][0]["message"] == "no such sale"
        # A late sale of an archived month is stored and counted; archiving again gives it files of its own.
        late = await post(client, "/sales", {"product_id": 1, "store_id": 4, "sold_at": "2025-09-20T10:00:00Z"})
        assert cli(url, "check").returncode == 0
        again = cli(url, "archive", "--before", "2025-10", "--to", str(tmp_path / "archive"))
        assert again.returncode == 0, again.stderr
        rows = read_csv(tmp_path / "archive" / "sales-2025-09-2.csv.gz")
        assert [int(r[0]) for r in rows[1:]] == [late["id"]]
        assert cli(url, "check").returncode == 0
        assert (await client.get("/reports/top-stores", params={"month": "2025-09"})).json()[0]["id"] in (2, 4)


async def test_a_month_whose_keys_still_live_is_not_archived(
    settings: config.Settings, clock: Clock, tmp_path: Path
) -> None:
    """A till may retry a sale until its key expires: the retry must find the sale, not store a second."""
    clock.set("2999-01-01T00:00:00Z")  # received "now" for the sale's key, whenever the archive runs
    sale = {**AUGUST_31, "idempotency_key": "till-7-000001"}
    async with app_client(settings, clock) as client:
        first = await post(client, "/sales", sale)
        refused = cli(plain(settings), "archive", "--before", "2025-10", "--to", str(tmp_path / "archive"))
        assert refused.returncode == 1
        assert "2025-08 has a sale whose idempotency key lives until 2999-01-31" in refused.stderr
        assert list((tmp_path / "archive").iterdir()) == [] and await count_sales(settings) == 1
        retried = await client.post("/sales", json=sale)
        assert retried.status_code == 200 and retried.json()["id"] == first["id"]


async def test_a_month_whose_returns_keys_still_live_is_not_archived(
    settings: config.Settings, clock: Clock, tmp_path: Path
) -> None:
    """A return leaves with its sale: a till's retry of it must find it, not be refused as the return of
    a sale that is gone (its refund counted, the till told it was not)."""
    clock.set("2025-10-15T12:00:00Z")
    async with app_client(settings, clock) as client:
        sale = await post(client, "/sales", AUGUST_31)  # no key: nothing of the sale itself holds the month
        clock.set("2999-01-01T00:00:00Z")  # the return is received "now", whenever the archive runs
        give_back = {"sale_id": sale["id"], "idempotency_key": "till-7-r-000001"}
        first = await post(client, "/returns", give_back)
        refused = cli(plain(settings), "archive", "--before", "2025-10", "--to", str(tmp_path / "archive"))
        assert refused.returncode == 1
        assert "2025-08 has a return of one of its sales whose idempotency key lives until 2999-01-31" in (
            refused.stderr
        )
        assert list((tmp_path / "archive").iterdir()) == [] and await count_sales(settings) == 1
        retried = await client.post("/returns", json=give_back)
        assert retried.status_code == 200 and retried.json()["id"] == first["id"]


async def test_archive_refuses_this_month_and_later(settings: config.Settings, tmp_path: Path) -> None:
    done = cli(plain(settings), "archive", "--before", "2999-01", "--to", str(tmp_path))
    assert done.returncode == 2 and "after this month" in done.stderr
    assert cli(plain(settings), "archive", "--before", "2025-13", "--to", str(tmp_path)).returncode == 2


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
async def test_archive_drops_the_months_partitions(
    settings: config.Settings, client: httpx.AsyncClient, tmp_path: Path
) -> None:
    await post(client, "/sales", {"product_id": 1, "store_id": 1, "sold_at": "2001-05-01T12:00:00Z"})  # DEFAULT
    database = db.connect(settings)
    try:
        async with database.writer.begin() as conn:
            await db.partitions.ensure(conn, [202505])
    finally:
        await database.dispose()
    await post(client, "/sales", {"product_id": 1, "store_id": 1, "sold_at": "2025-05-05T12:00:00Z"})
    assert cli(plain(settings), "archive", "--before", "2025-06", "--to", str(tmp_path)).returncode == 0
    query = sa.text("SELECT count(*) FROM pg_class WHERE relname = 'sales_p202505'")
    assert await scalar(settings, query) == 0
    assert await count_sales(settings) == 0
    assert len(read_csv(tmp_path / "sales-2001-05.csv.gz")) == 2


@pytest.mark.parametrize("holder", ["SELECT count(*) FROM sales", "LOCK TABLE sales IN ROW EXCLUSIVE MODE"])
@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
async def test_a_month_held_by_another_transaction_is_left_whole(
    settings: config.Settings, client: httpx.AsyncClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, holder: str
) -> None:
    """A reader (pg_dump, say) keeps the partition from being detached, a writer keeps the month from
    being locked: after ``LOCK_TIMEOUT`` the month is refused (``Busy``) before it is exported, its rows
    stay, and no file of it is written; once the other transaction ends, it is archived."""
    monkeypatch.setattr(archive, "LOCK_TIMEOUT", "200ms")
    exported: list[Any] = []
    export = archive._export

    async def counted(*args: Any) -> Any:
        exported.append(args[-1])
        return await export(*args)

    monkeypatch.setattr(archive, "_export", counted)
    database = db.connect(settings)
    try:
        async with database.writer.begin() as conn:
            await db.partitions.ensure(conn, [202505])
        await post(client, "/sales", {"product_id": 1, "store_id": 1, "sold_at": "2025-05-05T12:00:00Z"})
        other = await asyncpg.connect(plain(settings))
        try:
            held = other.transaction()
            await held.start()
            await other.execute(holder)
            with pytest.raises(archive.Busy, match="waited more than 200ms for another transaction"):
                async with database.writer.begin() as conn:
                    await archive.archive_month(conn, 202505, tmp_path, NOW, timedelta(days=30))
            assert exported == [] and os.listdir(tmp_path) == []  # refused before its export
            assert await count_sales(settings) == 1
            await held.rollback()
        finally:
            await other.close()
        async with database.writer.begin() as conn:
            done = await archive.archive_month(conn, 202505, tmp_path, NOW, timedelta(days=30))
        assert done is not None and done.sales == 1
        assert sorted(os.listdir(tmp_path)) == [
            "2025-05.sha256",
            "returns-2025-05.csv.gz",
            "sales-2025-05.csv.gz",
        ]
        assert await count_sales(settings) == 0
    finally:
        await database.dispose()


async def test_archive_never_writes_over_nor_removes_files_it_did_not_write(
    settings: config.Settings, client: httpx.AsyncClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file of the month already in the directory (another database's archive of it, say) is left as
    it is, and the month with it; a month whose export fails removes only the files it wrote."""
    await post(client, "/sales", {"product_id": 1, "store_id": 1, "sold_at": "2025-05-05T12:00:00Z"})
    directory = tmp_path / "archive"
    directory.mkdir()
    earlier = directory / "returns-2025-05.csv.gz"
    earlier.write_bytes(b"an earlier archive")
    refused = cli(plain(settings), "archive", "--before", "2025-06", "--to", str(directory))
    assert refused.returncode == 1 and "returns-2025-05.csv.gz exists already" in refused.stderr
    assert os.listdir(directory) == ["returns-2025-05.csv.gz"] and earlier.read_bytes() == b"an earlier archive"
    assert await count_sales(settings) == 1

    earlier.unlink()
    exports = 0
    export = archive._export

    async def full_disk(*args: Any) -> Any:
        nonlocal exports
        exports += 1
        if exports == 2:  # the sales' file is written: the returns' fails
            raise OSError(28, "No space left on device")
        return await export(*args)

    monkeypatch.setattr(archive, "_export", full_disk)
    database = db.connect(settings)
    try:
        with pytest.raises(OSError, match="No space left"):
            async with database.writer.begin() as conn:
                await archive.archive_month(conn, 202505, directory, NOW, timedelta(days=30))
    finally:
        await database.dispose()
    assert exports == 2 and os.listdir(directory) == []
    assert await count_sales(settings) == 1


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_sqlite_backup_while_a_writer_commits_is_consistent(
    settings: config.Settings, clock: Clock, tmp_path: Path
) -> None:
    copy = tmp_path / "copy.db"
    async with app_client(settings, clock) as client:
        stop, committing = asyncio.Event(), asyncio.Event()
        written = 0

        async def sell() -> None:
            nonlocal written
            while not stop.is_set():
                body = [{"product_id": 1 + i % 3, "store_id": 1 + i % 4} for i in range(50)]
                response = await client.post("/sales", json=body)
                assert response.status_code == 201
                written += 50
                if written >= 200:
                    committing.set()

        writer = asyncio.create_task(sell())
        await asyncio.wait_for(committing.wait(), 30)
        env = {**os.environ, "DATABASE_URL": plain(settings)}
        backup = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "salesreport", "backup", str(copy), cwd=ROOT, env=env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        _, err = await asyncio.wait_for(backup.communicate(), 60)
        during = written
        stop.set()
        await writer
        assert backup.returncode == 0, err.decode()
    # The copy is one moment of the database: whole batches, rollups equal to its sales.
    checked = cli(f"sqlite:///{copy}", "check")
    assert checked.returncode == 0, checked.stdout
    copy_settings = _with_url(settings, f"sqlite+aiosqlite:///{copy}")
    in_copy = await count_sales(copy_settings)
    assert 200 <= in_copy <= during and in_copy % 50 == 0


async def test_sqlite_backup_of_no_database_fails_and_creates_none(tmp_path: Path) -> None:
    # sqlite3 would create the missing file, and the copy of that empty database would pass for a backup.
    missing, copy = tmp_path / "missing.db", tmp_path / "copy.db"
    done = cli(f"sqlite:///{missing}", "backup", str(copy))
    assert done.returncode == 1 and "no SQLite database" in done.stderr
    assert not missing.exists() and not copy.exists()


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_sqlite_backup_refuses_to_write_over_the_database(settings: config.Settings) -> None:
    source = sa.engine.make_url(settings.database_url).database
    assert source is not None
    done = cli(plain(settings), "backup", source)
    assert done.returncode == 2 and "is the database itself" in done.stderr
    assert cli(plain(settings), "check").returncode == 0


def _with_url(settings: config.Settings, url: str) -> config.Settings:
    return replace(settings, database_url=url)


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
async def test_postgresql_backup_is_pg_dump_and_restores(
    settings: config.Settings, client: httpx.AsyncClient, pg_cluster: pg.Cluster, tmp_path: Path
) -> None:
    assert "pg_dump" in cli(plain(settings), "backup", str(tmp_path / "x")).stderr
    for month in ("2025-07", "2025-08", "2026-11"):
        await post(client, "/sales", {"product_id": 2, "store_id": 1, "sold_at": f"{month}-10T10:00:00Z"})
    sale = await post(client, "/sales", {"product_id": 1, "store_id": 2, "idempotency_key": "k-1"})
    await post(client, "/returns", {"sale_id": sale["id"]})
    assert cli(plain(settings), "archive", "--before", "2025-08", "--to", str(tmp_path)).returncode == 0
    dump = pg_cluster.root / "salesreport.dump"
    bindir = str(pg_cluster.bindir)
    where = ("-h", "127.0.0.1", "-p", str(pg_cluster.port), "-U", "postgres")
    pg_cluster.run(f"{bindir}/pg_dump", *where, "-Fc", "-f", str(dump), "salesreport")
    pg_cluster.psql("DROP DATABASE IF EXISTS restored")
    pg_cluster.psql("CREATE DATABASE restored")
    pg_cluster.run(f"{bindir}/pg_restore", *where, "-d", "restored", str(dump))
    restored = pg_cluster.url("restored")
    checked = cli(restored, "check")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "1 months archived (2025-07)" in checked.stdout
    restored_settings = _with_url(settings, config.async_url(restored))
    assert await count_sales(restored_settings) == await count_sales(settings) == 3
    # The restored database serves: its keys and partitions came along.
    async with app_client(restored_settings, Clock()) as again:
        replay = await again.post("/sales", json={"product_id": 1, "store_id": 2, "idempotency_key": "k-1"})
        assert replay.status_code == 200 and replay.json()["id"] == sale["id"]
    pg_cluster.psql("DROP DATABASE restored")


async def test_archive_and_backup_to_where_they_cannot_write_say_so(settings: config.Settings, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    refused = cli(plain(settings), "archive", "--before", "2025-10", "--to", str(blocker))
    assert refused.returncode == 1 and "archive: " in refused.stderr and "Traceback" not in refused.stderr
    if settings.is_sqlite:
        nowhere = cli(plain(settings), "backup", str(tmp_path / "missing" / "copy.db"))
        assert nowhere.returncode == 1 and "backup: " in nowhere.stderr and "Traceback" not in nowhere.stderr
        for directory in (str(tmp_path), "", "."):  # a directory is not a file name: nothing is copied into it
            into = cli(plain(settings), "backup", directory)
            assert into.returncode == 2 and "is a directory" in into.stderr and "Traceback" not in into.stderr
        assert not tmp_path.with_name(tmp_path.name + ".partial").exists()


async def test_a_key_on_its_last_instant_still_holds_its_month(
    client: httpx.AsyncClient, settings: config.Settings, tmp_path: Path
) -> None:
    """The lookups find a key received exactly one lifetime ago (``replay.is_live``): so must the archive."""
    lifetime = timedelta(days=30)
    await post(client, "/sales", {**AUGUST_31, "idempotency_key": "till-7-000002"})  # received at NOW
    database = db.connect(settings)
    try:
        with pytest.raises(archive.Recent):
            async with database.writer.begin() as conn:
                await archive.archive_month(conn, 202508, tmp_path, NOW + lifetime, lifetime)
        assert await count_sales(settings) == 1
        async with database.writer.begin() as conn:
            done = await archive.archive_month(
                conn, 202508, tmp_path, NOW + lifetime + timedelta(microseconds=1), lifetime
            )
        assert done is not None and done.sales == 1
    finally:
        await database.dispose()
