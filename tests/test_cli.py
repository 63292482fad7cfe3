"""The command line, run as a user would: migrate, import, demo, check."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from salesreport import config, db
from salesreport.api import create_app
from tests.conftest import ROOT, Clock, count_sales, eventually, scalar

pytestmark = pytest.mark.anyio


def cli(database_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DATABASE_URL": database_url}
    return subprocess.run(
        [sys.executable, "-m", "salesreport", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )


def write(path: Path, text: str) -> str:
    path.write_text(text, encoding="utf-8")
    return str(path)


async def test_migrate_twice_is_harmless(database_url: str) -> None:
    assert cli(database_url, "migrate").returncode == 0
    assert cli(database_url, "migrate").returncode == 0


async def test_import_and_price_change_keeps_history(
    database_url: str, settings: config.Settings, clock: Clock, tmp_path: Path
) -> None:
    products = write(tmp_path / "p.csv", 'id,name,price\n1,Tea,2.50\n2,"Milk, 1 l",0.99\n')
    stores = write(tmp_path / "s.csv", 'id,address,timezone\n7,"Main st. 1, Omsk",Asia/Omsk\n')
    done = cli(database_url, "import", "--products", products, "--stores", stores)
    assert done.returncode == 0, done.stderr
    app = create_app(settings, clock=clock)
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1") as http:
            assert (await http.get("/products")).json() == [
                {"id": 1, "name": "Tea", "price": "2.50"},
                {"id": 2, "name": "Milk, 1 l", "price": "0.99"},
            ]
            assert (await http.get("/stores")).json() == [
                {"id": 7, "address": "Main st. 1, Omsk", "timezone": "Asia/Omsk"}
            ]
            sale = await http.post("/sales", json={"product_id": 1, "store_id": 7, "sold_at": "2026-05-05T05:05:05Z"})
            assert sale.json()["unit_price"] == "2.50"
            # The running service picks up the new price without a restart; a file may list only what changes.
            new_price = write(tmp_path / "p2.csv", "id,name,price\n1,Tea,3\n")
            changed = cli(database_url, "import", "--products", new_price, "--effective", "2026-05-06T00:00:00Z")
            assert changed.returncode == 0, changed.stderr
            # On PostgreSQL the worker notices the change a moment later (cli() blocked the app's loop): poll.

            async def new_price_loaded() -> bool:
                return {"id": 1, "name": "Tea", "price": "3.00"} in (await http.get("/products")).json()

            await eventually(new_price_loaded, what="the new price is loaded")
            later = await http.post("/sales", json={"product_id": 1, "store_id": 7, "sold_at": "2026-05-06T05:05:05Z"})
            assert later.json()["unit_price"] == "3.00"
            # A sale uploaded late is priced as of when it was made, not as of its arrival.
            backlog = await http.post(
                "/sales", json={"product_id": 1, "store_id": 7, "sold_at": "2026-05-05T23:59:59Z"}
            )
            assert backlog.json()["unit_price"] == backlog.json()["catalog_price"] == "2.50"
            assert (await http.get("/reports/top-stores", params={"month": "2026-05"})).json()[0]["revenue"] == "8.00"
            history = (await http.get("/products/1")).json()["prices"]
            assert history == [
                {"effective_from": None, "price": "2.50"},
                {"effective_from": "2026-05-06T00:00:00Z", "price": "3.00"},
            ]
            # A product added while the service runs can be sold at once.
            added = write(tmp_path / "p3.csv", "id,name,price\n3,Sugar,1.00\n")
            assert cli(database_url, "import", "--products", added).returncode == 0
            assert (await http.post("/sales", json={"product_id": 3, "store_id": 7})).status_code == 201


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("id,name,price\n1,Tea,2.50\n2,Milk,-1\n", ":3: price"),
        ("id,name,price\n1,Tea,2.505\n", ":2: price"),
        ("id,name,price\n1,Tea,0\n", ":2: price"),
        ("id,name,price\nx,Tea,1\n", ":2: id"),
        ("id,name,price\n\u0661\u0662,Tea,1\n", ":2: id"),  # digits, but not ASCII ones
        ("id,name,price\n" + "9" * 5000 + ",Tea,1\n", ":2: id"),
        ("id,name,price\n1,,1\n", ":2: name"),
        ("id,name,price\n1,Tea\n", ":2: expected 3 fields"),
        ("id,name,price\n1,Tea,1\n1,Tea,2\n", ":3: id 1 appears twice"),
        ("name,id,price\n1,Tea,1\n", ":1: the header"),
        # A quoted field over two lines: the next record's line is the file's.
        ('id,name,price\n1,"Tea\nleaves",1\nx,Tea,1\n', ":4: id"),
    ],
)
async def test_bad_product_csv_writes_nothing(
    database_url: str, settings: config.Settings, tmp_path: Path, text: str, problem: str
) -> None:
    good_stores = write(tmp_path / "s.csv", "id,address,timezone\n1,A,UTC\n")
    done = cli(database_url, "import", "--products", write(tmp_path / "p.csv", text), "--stores", good_stores)
    assert done.returncode == 1
    assert problem in done.stderr
    assert await scalar(settings, sa.select(sa.func.count()).select_from(db.products)) == 0
    assert await scalar(settings, sa.select(sa.func.count()).select_from(db.stores)) == 0


async def test_import_of_a_catalog_larger_than_a_statements_parameters(
    database_url: str, settings: config.Settings, tmp_path: Path
) -> None:
    # asyncpg takes at most 32,767 parameters per statement: a catalog's ids are looked up in slices.
    count = 33_000
    first = write(tmp_path / "p.csv", "id,name,price\n" + "".join(f"{i},P{i},1.00\n" for i in range(1, count + 1)))
    done = cli(database_url, "import", "--products", first)
    assert done.returncode == 0, done.stderr[-2000:]
    changed = write(tmp_path / "p2.csv", "id,name,price\n" + "".join(f"{i},P{i},2.00\n" for i in range(1, count + 1)))
    done = cli(database_url, "import", "--products", changed, "--effective", "2026-05-06T00:00:00Z")
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"{count} price changes" in done.stdout
    assert await scalar(settings, sa.select(sa.func.count()).select_from(db.prices)) == 2 * count


async def test_a_field_past_the_csv_readers_limit_is_named(database_url: str, tmp_path: Path) -> None:
    text = "id,name,price\n1,Tea,1\n2," + "x" * 140_000 + ",1\n"  # over the csv module's 128 KiB
    done = cli(database_url, "import", "--products", write(tmp_path / "p.csv", text))
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert ":3: cannot read the file from here on: field larger than field limit" in done.stderr


async def test_bad_store_csv_names_every_line(database_url: str, tmp_path: Path) -> None:
    text = "id,address,timezone\n1,A,Mars/Olympus\n2,B,UTC\n3,C,\n"
    done = cli(database_url, "import", "--stores", write(tmp_path / "s.csv", text))
    assert done.returncode == 1
    assert ":2: timezone" in done.stderr and ":4: timezone" in done.stderr and ":3:" not in done.stderr


async def test_demo_then_check_then_repair(database_url: str, settings: config.Settings) -> None:
    done = cli(database_url, "demo", "--sales", "3000", "--stores", "12", "--products", "40")
    assert done.returncode == 0, done.stderr
    assert await count_sales(settings) == 3000
    assert cli(database_url, "demo").stdout.startswith("the database already has a catalog")
    assert await count_sales(settings) == 3000
    checked = cli(database_url, "check")
    assert checked.returncode == 0, checked.stdout
    database = db.connect(settings)
    async with database.writer.begin() as conn:
        await conn.execute(
            sa.update(db.store_month).values(revenue=db.store_month.c.revenue + 1).where(db.store_month.c.store_id == 1)
        )
        await conn.execute(sa.delete(db.product_total).where(db.product_total.c.product_id == 2))
    await database.dispose()
    broken = cli(database_url, "check")
    assert broken.returncode == 1
    assert "store_month (1," in broken.stdout and "product_total (2,)" in broken.stdout
    assert cli(database_url, "check", "--repair").returncode == 0
    assert cli(database_url, "check").returncode == 0


async def test_import_needs_a_file(database_url: str) -> None:
    assert cli(database_url, "import").returncode == 2


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_a_command_on_a_missing_sqlite_file_says_so_and_creates_none(database_url: str, tmp_path: Path) -> None:
    missing = tmp_path / "misspelled.db"
    for args in (("check",), ("keys", "list"), ("demo", "--sales", "0")):
        done = cli(f"sqlite:///{missing}", *args)
        assert done.returncode == 1, (args, done.stderr)
        assert f"no SQLite database at '{missing}'" in done.stderr and "Traceback" not in done.stderr
    assert not missing.exists()
    assert cli(f"sqlite:///{missing}", "migrate").returncode == 0  # migrate creates it
    assert cli(f"sqlite:///{missing}", "check").returncode == 0


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_serve_on_a_missing_sqlite_file_says_so_and_creates_none(database_url: str, tmp_path: Path) -> None:
    missing = tmp_path / "misspelled.db"
    # A port held here: were the file not refused first, serve would stop at the port, never serve.
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        done = cli(f"sqlite:///{missing}", "serve", "--port", str(held.getsockname()[1]))
    assert done.returncode == 1, done.stderr
    assert f"no SQLite database at '{missing}'" in done.stderr and "Traceback" not in done.stderr
    assert not missing.exists()


async def test_a_command_on_a_database_without_the_schema_says_run_migrate(database_url: str, tmp_path: Path) -> None:
    if database_url.startswith("sqlite"):
        bare = f"sqlite:///{tmp_path / 'bare.db'}"
        sqlite3.connect(tmp_path / "bare.db").close()
    else:
        bare = database_url.rsplit("/", 1)[0] + "/postgres"  # the cluster's own database: no tables of ours
    for args in (("check",), ("keys", "list"), ("archive", "--before", "2025-01", "--to", str(tmp_path / "a"))):
        done = cli(bare, *args)
        assert done.returncode == 1, (args, done.stderr)
        assert "the database has no schema" in done.stderr and "salesreport migrate" in done.stderr
        assert "Traceback" not in done.stderr
    assert not (tmp_path / "a").exists()  # the archive's directory is made only for a database it can archive


async def test_archive_into_a_directory_it_cannot_make_says_so(database_url: str, tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("not a directory")
    done = cli(database_url, "archive", "--before", "2025-01", "--to", str(tmp_path / "a-file" / "archive"))
    assert done.returncode == 1, done.stderr
    assert "archive: cannot make the directory" in done.stderr and "Traceback" not in done.stderr


async def test_repair_spreads_a_sum_beyond_one_slot_over_several(
    database_url: str, settings: config.Settings, clock: Clock
) -> None:
    """Several workers may each fill a slot up to its bound; a rebuild must hold their sum too."""
    big = db.ROLLUP_LIMIT - 1
    sale = {"product_id": 1, "quantity": 1, "unit_price": big, "catalog_price": big, "amount": big, "month": 202611}
    at = {"sold_at": clock(), "received_at": clock()}
    database = db.connect(settings)
    async with database.writer.begin() as conn:
        await db.store_history(conn, [{**sale, **at, "store_id": 1, "idempotency_key": None}], slot=0)
        await db.store_history(conn, [{**sale, **at, "store_id": 1, "idempotency_key": None}], slot=1)
    await database.dispose()
    assert cli(database_url, "check").returncode == 0
    repaired = cli(database_url, "check", "--repair")
    assert repaired.returncode == 0, repaired.stderr
    assert cli(database_url, "check").returncode == 0
    total = await scalar(settings, sa.select(sa.func.sum(db.store_month.c.revenue)))
    assert int(total) == 2 * big


async def test_migrate_refuses_while_workers_serve_an_older_schema(
    database_url: str, client: httpx.AsyncClient, settings: config.Settings
) -> None:
    if settings.is_sqlite:
        pytest.skip("SQLite cannot tell whether a server has it open")

    async def registered() -> bool:
        return bool(await scalar(settings, sa.select(sa.func.count()).select_from(db.workers)))

    await eventually(registered, what="the app's worker records itself as serving")
    head = await scalar(settings, sa.text("SELECT version_num FROM alembic_version"))
    database = db.connect(settings)
    try:
        async with database.writer.begin() as conn:  # as if this code were newer than the database
            await conn.execute(sa.text("UPDATE alembic_version SET version_num = '0002'"))
        refused = cli(database_url, "migrate")
        assert refused.returncode == 1
        assert "workers of this service are connected" in refused.stderr
    finally:
        async with database.writer.begin() as conn:
            await conn.execute(sa.text("UPDATE alembic_version SET version_num = :head"), {"head": head})
        await database.dispose()
    assert cli(database_url, "migrate").returncode == 0  # at the head: nothing to do, nothing refused


def alembic(database_url: str, verb: str, revision: str) -> subprocess.CompletedProcess[str]:
    """Alembic's ``upgrade`` or ``downgrade`` to ``revision``, with the service's own configuration."""
    code = (
        "import sys; from alembic import command; from salesreport import config; "
        "from salesreport.cli.schema import alembic_config; "
        "getattr(command, sys.argv[1])(alembic_config(config.load()), sys.argv[2])"
    )
    env = {**os.environ, "DATABASE_URL": database_url}
    return subprocess.run(
        [sys.executable, "-c", code, verb, revision], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )


async def test_the_newest_migration_goes_down_and_up_keeping_the_rollups_and_their_bound(
    database_url: str, settings: config.Settings, clock: Clock
) -> None:
    from alembic.script import ScriptDirectory

    from salesreport.cli.schema import alembic_config

    scripts = ScriptDirectory.from_config(alembic_config(settings))
    head = scripts.get_current_head()
    assert head is not None
    previous = scripts.get_revision(head).down_revision
    assert isinstance(previous, str)
    big = db.ROLLUP_LIMIT - 1
    sale = {"product_id": 1, "quantity": 1, "unit_price": big, "catalog_price": big, "amount": big, "month": 202611}
    database = db.connect(settings)
    async with database.writer.begin() as conn:
        await db.store_history(
            conn, [{**sale, "sold_at": clock(), "received_at": clock(), "store_id": 1, "idempotency_key": None}]
        )
    await database.dispose()

    async def crossing_the_bound_is_refused() -> None:
        database = db.connect(settings)
        try:
            with pytest.raises(sa.exc.IntegrityError):
                async with database.writer.begin() as conn:
                    await conn.execute(sa.text("UPDATE store_month SET revenue = revenue + 2"))
        finally:
            await database.dispose()

    try:
        down = alembic(database_url, "downgrade", previous)
        assert down.returncode == 0, down.stderr
        await crossing_the_bound_is_refused()
    finally:
        up = alembic(database_url, "upgrade", "head")  # the other tests' database, whatever happened
    assert up.returncode == 0, up.stderr
    checked = cli(database_url, "check")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    await crossing_the_bound_is_refused()
    assert await scalar(settings, sa.text("SELECT version_num FROM alembic_version")) == head
    assert int(await scalar(settings, sa.select(sa.func.sum(db.store_month.c.revenue)))) == big


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_a_migration_that_fails_on_sqlite_leaves_the_schema_as_it_was(database_url: str, tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    url = f"sqlite:///{path}"
    older = alembic(url, "upgrade", "0002")  # as an older version of this code would have
    assert older.returncode == 0, older.stderr
    with contextlib.closing(sqlite3.connect(path)) as conn:
        # A sale whose amount is past a rollup slot's bound: 0003's rebuild of the product rollups fails
        # on its last statement, after it has created and copied tables.
        conn.execute("INSERT INTO products VALUES (1, 'Tea', 100)")
        conn.execute(
            "INSERT INTO sales (store_id, product_id, quantity, unit_price, amount, sold_at, received_at, month) "
            f"VALUES (1, 1, 1, 1, {2**60}, '2026-01-01 00:00:00', '2026-01-01 00:00:00', 202601)"
        )
        conn.commit()

    def tables() -> set[str]:
        with contextlib.closing(sqlite3.connect(path)) as conn:
            return {name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}

    before = tables()
    assert cli(url, "migrate").returncode == 1
    assert tables() == before  # not one table of 0003 (prices, returns) left behind
    with contextlib.closing(sqlite3.connect(path)) as conn:
        assert conn.execute("SELECT version_num FROM alembic_version").fetchall() == [("0002",)]
        conn.execute("DELETE FROM sales")
        conn.commit()
    done = cli(url, "migrate")  # once the cause is gone, the same command finishes the upgrade
    assert done.returncode == 0, done.stderr
    assert cli(url, "check").returncode == 0


async def test_a_database_that_refuses_the_command_is_named_without_a_traceback(
    database_url: str, tmp_path: Path
) -> None:
    if database_url.startswith("sqlite"):
        refusing = f"sqlite:///{tmp_path / 'no-such-directory' / 'sales.db'}"
        args: tuple[str, ...] = ("migrate",)  # migrate creates the file, but not its directory
        words = "unable to open database file"
    else:
        refusing = database_url.rsplit("/", 1)[0] + "/no_such_database"
        args = ("keys", "list")
        words = 'database "no_such_database" does not exist'
    done = cli(refusing, *args)
    assert done.returncode == 1
    assert "refused" in done.stderr and words in done.stderr and "Traceback" not in done.stderr


def _demo_killed_after_its_first_chunk(database_url: str) -> str:
    """Start ``demo`` with several chunks of sales, kill it once it reports the first; its stderr."""
    env = {**os.environ, "DATABASE_URL": database_url}
    argv = [sys.executable, "-m", "salesreport", "demo", "--sales", "150000", "--stores", "3", "--products", "5"]
    with subprocess.Popen(argv, cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True) as proc:
        assert proc.stderr is not None
        said = ""
        while "50000 sales" not in said:
            line = proc.stderr.readline()
            assert line, f"demo ended before its first chunk: {said}"
            said += line
        proc.kill()
    return said


async def test_a_demo_interrupted_halfway_leaves_the_database_empty(
    database_url: str, settings: config.Settings
) -> None:
    await asyncio.to_thread(_demo_killed_after_its_first_chunk, database_url)
    assert await scalar(settings, sa.select(sa.func.count()).select_from(db.products)) == 0
    assert await count_sales(settings) == 0
    done = cli(database_url, "demo", "--sales", "100", "--stores", "3", "--products", "5")
    assert done.returncode == 0 and done.stdout.startswith("demo chain"), done.stdout + done.stderr
    assert await count_sales(settings) == 100


@pytest.mark.parametrize("args", [("--stores", "0"), ("--products", "0"), ("--sales", "-5")])
async def test_a_demo_of_no_stores_products_or_negative_sales_is_refused(
    database_url: str, settings: config.Settings, args: tuple[str, str]
) -> None:
    done = cli(database_url, "demo", *args)
    assert done.returncode == 2 and "must be between" in done.stderr and "Traceback" not in done.stderr
    assert await scalar(settings, sa.select(sa.func.count()).select_from(db.products)) == 0
