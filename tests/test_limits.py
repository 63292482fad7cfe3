"""Bounds that keep one request from costing the service much: error lists, rollup sums, open mode."""

from __future__ import annotations

import json
from dataclasses import replace

import httpx
import pytest
import sqlalchemy as sa

from salesreport import config, db
from salesreport.schemas import MAX_ERRORS, format_money
from tests.conftest import Clock, app_client, count_sales
from tests.test_api import assert_problem
from tests.test_auth import create
from tests.test_health import execute

pytestmark = pytest.mark.anyio

JSON = {"content-type": "application/json"}


async def test_a_body_of_unknown_fields_gets_a_small_answer_that_counts_them(client: httpx.AsyncClient) -> None:
    body = json.dumps({f"f{i}": 1 for i in range(80_000)}).encode()
    assert len(body) < 1024 * 1024
    # One object this large is refused whole.
    response = await client.post("/sales", content=body, headers=JSON)
    problem = assert_problem(response, 422)
    assert len(response.content) < 64 * 1024
    assert problem["error_count"] == 1 and "bytes" in problem["errors"][0]["message"]
    # An array of many small bad objects: the first hundred errors are listed, all are counted.
    items = [{**{f"x{i}": 1 for i in range(30)}, "product_id": "a"} for _ in range(1000)]
    body = json.dumps(items).encode()
    assert len(body) < 1024 * 1024
    response = await client.post("/sales", content=body, headers=JSON)
    problem = assert_problem(response, 422)
    assert len(response.content) < 64 * 1024
    assert len(problem["errors"]) == MAX_ERRORS
    # Per item: 30 unknown fields, a product_id of the wrong type, no store_id.
    assert problem["error_count"] == 1000 * 32


async def test_a_sale_that_would_overflow_a_rollup_fails_alone_and_reports_stay_exact(
    client: httpx.AsyncClient, settings: config.Settings
) -> None:
    near = db.ROLLUP_LIMIT - 5
    for slot in range(db.SLOTS):
        await execute(
            settings,
            f"INSERT INTO store_month (store_id, month, slot, revenue, sales) VALUES (1, 202611, {slot}, {near}, 1)",
        )
    sale = {"product_id": 2, "store_id": 1, "sold_at": "2026-11-10T10:00:00Z"}
    response = await client.post("/sales", content=json.dumps(sale), headers=JSON)
    problem = assert_problem(response, 422)
    assert "refused" in problem["errors"][0]["message"]
    assert await count_sales(settings) == 0
    # Other stores go on.
    assert (await client.post("/sales", content=json.dumps({**sale, "store_id": 2}), headers=JSON)).status_code == 201
    top = (await client.get("/reports/top-stores", params={"month": "2026-11"})).json()
    total = format_money(db.SLOTS * near)
    assert top[0] == {
        "id": 1,
        "address": "1 Red Square, Moscow",
        "revenue": total,
        "gross": total,
        "refunds": "0.00",
        "discounts": "0.00",
    }


@pytest.mark.parametrize(
    ("headers", "client_host"),
    [
        ({"forwarded": "for=203.0.113.9"}, "127.0.0.1"),
        ({"x-forwarded-for": "203.0.113.9"}, "127.0.0.1"),
        ({"x-real-ip": "203.0.113.9"}, "127.0.0.1"),
        ({"via": "1.1 nginx"}, "127.0.0.1"),
        ({}, "192.0.2.10"),
        ({}, "::ffff:192.0.2.10"),
        # DNS rebinding: a page from elsewhere, its name now pointing here, still sends its own Host.
        ({"host": "rebound.example:8000"}, "127.0.0.1"),
        ({"host": "127.0.0.1.rebound.example"}, "127.0.0.1"),
        ({"host": "[::1"}, "127.0.0.1"),
    ],
)
async def test_open_mode_answers_loopback_clients_only(
    settings: config.Settings, clock: Clock, headers: dict[str, str], client_host: str
) -> None:
    async with app_client(settings, clock) as local:
        assert (await local.get("/products")).status_code == 200  # no key exists: open, here
        for host in ("localhost:8000", "[::1]:8000", "127.0.0.2"):
            assert (await local.get("/products", headers={"host": host})).status_code == 200, host
        app = local.app  # type: ignore[attr-defined]
        transport = httpx.ASGITransport(app=app, client=(client_host, 5555))
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1", headers=headers) as remote:
            problem = assert_problem(await remote.get("/products"), 401)
            assert "loopback" in problem["detail"] and "keys create" in problem["detail"]
            refused = await remote.post("/sales", content=json.dumps({"product_id": 1, "store_id": 1}), headers=JSON)
            assert refused.status_code == 401
            # Probes and the OpenAPI document carry no data.
            assert (await remote.get("/health/live")).status_code == 200
            assert (await remote.get("/openapi.json")).status_code == 200
    assert await count_sales(settings) == 0


async def test_readers_cannot_take_the_writers_connections(settings: config.Settings, clock: Clock) -> None:
    """Every read connection is busy (slow reports, say): sales are still written."""
    async with app_client(replace(settings, pool_size=1), clock) as client:
        database = client.app.state.service.db  # type: ignore[attr-defined]
        async with database.reader.connect() as held:  # the only reader
            await held.execute(sa.text("SELECT 1"))
            response = await client.post("/sales", content=json.dumps({"product_id": 1, "store_id": 1}), headers=JSON)
            assert response.status_code == 201, response.text
    assert await count_sales(settings) == 1


async def test_a_403_for_many_items_is_small_too(client: httpx.AsyncClient, settings: config.Settings) -> None:
    _, pos = await create(settings, "pos", 1)
    body = [{"product_id": 1, "store_id": 2}] * 1000
    response = await client.post("/sales", json=body, headers={"authorization": f"Bearer {pos}"})
    problem = assert_problem(response, 403)
    assert len(problem["errors"]) == MAX_ERRORS and problem["error_count"] == 1000
    assert len(response.content) < 64 * 1024
