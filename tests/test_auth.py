"""API keys: every endpoint × every role, the safe default, revocation."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from salesreport import auth, config, db
from tests.conftest import Clock, app_client, count_sales, eventually
from tests.test_api import assert_problem
from tests.test_cli import cli

pytestmark = pytest.mark.anyio
# Also through PgBouncer in transaction pooling mode (see conftest.database_url).
THROUGH_PGBOUNCER = True

SALE = {"product_id": 1, "store_id": 1}
ENDPOINTS = [
    ("GET", "/products", None),
    ("GET", "/stores", None),
    ("POST", "/sales", SALE),
    ("GET", "/reports/top-stores", None),
    ("GET", "/reports/top-products", None),
]
POS_MAY = {"/products", "/stores", "/sales"}


async def create(settings: config.Settings, role: str, store: int | None = None) -> tuple[int, str]:
    database = db.connect(settings)
    try:
        async with database.writer.begin() as conn:
            return await auth.create_key(conn, role, store)
    finally:
        await database.dispose()


async def revoke(settings: config.Settings, key_id: int) -> None:
    database = db.connect(settings)
    try:
        async with database.writer.begin() as conn:
            assert await auth.revoke_key(conn, key_id)
    finally:
        await database.dispose()


async def call(client: httpx.AsyncClient, method: str, path: str, body: object, key: str | None) -> httpx.Response:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    return await client.request(method, path, json=body, headers=headers)


async def test_open_until_the_first_key(client: httpx.AsyncClient) -> None:
    for method, path, body in ENDPOINTS:
        assert (await call(client, method, path, body, None)).status_code in (200, 201)


async def test_every_endpoint_every_role(client: httpx.AsyncClient, settings: config.Settings) -> None:
    _, owner = await create(settings, "owner")
    _, pos = await create(settings, "pos", 1)
    revoked_id, revoked = await create(settings, "owner")
    await revoke(settings, revoked_id)
    for method, path, body in ENDPOINTS:
        assert (await call(client, method, path, body, owner)).status_code in (200, 201), path
        expected = (200, 201) if path in POS_MAY else (403,)
        response = await call(client, method, path, body, pos)
        assert response.status_code in expected, (path, response.text)
        if response.status_code == 403:
            assert_problem(response, 403)
        for key in (None, "sr_wrong", revoked, owner + "x", ""):
            response = await call(client, method, path, body, key)
            assert_problem(response, 401)
            assert response.headers["www-authenticate"].startswith("Bearer")
        for header in ("Basic dXNlcjpwYXNz", owner, f"Token {owner}"):
            response = await client.request(method, path, json=body, headers={"authorization": header})
            assert_problem(response, 401)
    # Health probes carry no data: a load balancer has no key.
    assert (await client.get("/health/live")).status_code == 200
    assert (await client.get("/health/ready")).status_code == 200


async def test_pos_key_posts_for_its_store_only(client: httpx.AsyncClient, settings: config.Settings) -> None:
    await create(settings, "owner")
    _, pos = await create(settings, "pos", 2)
    ok = await call(client, "POST", "/sales", {"product_id": 1, "store_id": 2}, pos)
    assert ok.status_code == 201
    problem = assert_problem(await call(client, "POST", "/sales", SALE, pos), 403)
    assert problem["errors"][0]["field"] == "store_id"
    batch = [{"product_id": 1, "store_id": 2}, {"product_id": 2, "store_id": 2}, {"product_id": 1, "store_id": 3}]
    problem = assert_problem(await call(client, "POST", "/sales", batch, pos), 403)
    assert [e["index"] for e in problem["errors"]] == [2]
    assert await count_sales(settings) == 1


async def test_revoking_takes_effect_at_once(
    client: httpx.AsyncClient, settings: config.Settings, database_url: str
) -> None:
    created = cli(database_url, "keys", "create", "--role", "owner")
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip().splitlines()[-1]
    assert key.startswith(auth.PREFIX) and len(key) >= 40
    assert (await call(client, "GET", "/reports/top-products", None, key)).status_code == 200
    listing = cli(database_url, "keys", "list").stdout
    assert key not in listing
    key_id = listing.split()[0]
    assert listing.startswith(f"{key_id} owner - ")
    assert cli(database_url, "keys", "revoke", key_id).returncode == 0
    # On SQLite every request reads the keys' version; on PostgreSQL the worker notices the change at its
    # next read of the change counters (within changes.BOUND): poll for it.

    async def refused() -> httpx.Response | None:
        response = await call(client, "GET", "/reports/top-products", None, key)
        return response if response.status_code == 401 else None

    assert_problem(await eventually(refused, what="the revoked key is refused"), 401)
    assert "revoked" in cli(database_url, "keys", "list").stdout


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize(
    "args", [("revoke", "99999999999999999999"), ("create", "--role", "pos", "--store", "99999999999999999999")]
)
async def test_a_key_or_store_id_past_a_bigint_is_a_usage_error(database_url: str, args: tuple[str, ...]) -> None:
    done = cli(database_url, "keys", *args)
    assert done.returncode == 2 and "must be between 1 and" in done.stderr and "Traceback" not in done.stderr


async def test_last_use_is_recorded(client: httpx.AsyncClient, settings: config.Settings, database_url: str) -> None:
    _, owner = await create(settings, "owner")
    assert (await call(client, "GET", "/products", None, owner)).status_code == 200
    await client.app.state.service.keys._flush_use()  # type: ignore[attr-defined]
    line = cli(database_url, "keys", "list").stdout.strip()
    assert not line.endswith("never")


async def test_only_hashes_are_stored(settings: config.Settings) -> None:
    _, key = await create(settings, "owner")
    database = db.connect(settings)
    try:
        async with database.reader.connect() as conn:
            rows = (await conn.execute(db.api_keys.select())).all()
    finally:
        await database.dispose()
    assert all(key not in str(tuple(r)) for r in rows)
    assert rows[0].hash == auth.digest(key)


async def test_key_commands_check_their_arguments(database_url: str) -> None:
    assert cli(database_url, "keys", "create", "--role", "pos").returncode == 2
    assert cli(database_url, "keys", "create", "--role", "owner", "--store", "1").returncode == 2
    assert cli(database_url, "keys", "create", "--role", "pos", "--store", "404").returncode == 1
    assert cli(database_url, "keys", "revoke", "999").returncode == 1


async def test_a_pos_key_for_a_retired_store_is_made_saying_its_sales_are_refused(
    client: httpx.AsyncClient, database_url: str
) -> None:
    assert cli(database_url, "retire", "--store", "1").returncode == 0
    created = cli(database_url, "keys", "create", "--role", "pos", "--store", "1")
    assert created.returncode == 0, created.stderr
    assert "store 1 is retired" in created.stderr and "--undo" in created.stderr
    ordinary = cli(database_url, "keys", "create", "--role", "pos", "--store", "2")
    assert ordinary.returncode == 0 and ordinary.stderr == ""


async def test_serve_refuses_a_public_address_without_keys(database_url: str) -> None:
    refused = cli(database_url, "serve", "--host", "0.0.0.0", "--port", "1")
    assert refused.returncode == 2
    assert "keys create" in refused.stderr


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
async def test_a_starting_worker_knows_the_keys_before_it_answers(settings: config.Settings, clock: Clock) -> None:
    """Requests that arrive together at a worker that has not loaded the keys yet all wait for that load:
    none is answered as if no key existed (open to loopback, or 401 "no API key exists yet" through a proxy)."""
    _, owner = await create(settings, "owner")
    async with app_client(settings, clock) as client:
        catalog = client.app.state.service.catalog  # type: ignore[attr-defined]

        async def listening() -> bool:
            # The worker hears of changes (a fresh catalog stays fresh): what it knew before is in doubt.
            await catalog.refresh()
            return not catalog.changes.stale("catalog", catalog.version)

        await eventually(listening, what="the worker listens for changes")
        proxied = {"authorization": f"Bearer {owner}", "x-forwarded-for": "192.0.2.7"}
        answers = await asyncio.gather(*(client.get("/products", headers=proxied if i % 2 else {}) for i in range(20)))
    statuses = [r.status_code for r in answers]
    assert statuses == [401, 200] * 10, [r.text for r in answers][:4]
