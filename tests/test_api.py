"""Catalog endpoints, the error format, and the OpenAPI document."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from salesreport import config, logs
from tests.conftest import PRODUCTS, STORES

pytestmark = pytest.mark.anyio


def assert_problem(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    assert body["title"] and body["detail"]
    return body


async def test_products_ordered_by_id_with_decimal_prices(client: httpx.AsyncClient) -> None:
    response = await client.get("/products")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.json() == [
        {"id": 1, "name": "Milk", "price": "0.10"},
        {"id": 2, "name": "Bread", "price": "45.50"},
        {"id": 3, "name": "Coffee", "price": "1234.56"},
        {"id": 9_000_000_000_000_000_000, "name": "Big id", "price": "0.01"},
    ]


async def test_stores_ordered_by_id(client: httpx.AsyncClient) -> None:
    response = await client.get("/stores")
    assert response.status_code == 200
    assert response.json() == [{"id": s["id"], "address": s["address"], "timezone": s["timezone"]} for s in STORES]


async def test_unknown_path_is_a_problem(client: httpx.AsyncClient) -> None:
    assert_problem(await client.get("/nowhere"), 404)


async def test_wrong_method_is_a_problem_with_allow(client: httpx.AsyncClient) -> None:
    response = await client.delete("/products")
    assert_problem(response, 405)
    assert "GET" in response.headers["allow"]
    assert_problem(await client.get("/sales"), 405)


async def test_health(client: httpx.AsyncClient) -> None:
    assert (await client.get("/health/live")).status_code == 200
    assert (await client.get("/health/ready")).status_code == 200


async def test_openapi_declares_every_status(client: httpx.AsyncClient) -> None:
    response = await client.get("/openapi.json")
    assert response.status_code == 200
    doc = response.json()
    post = doc["paths"]["/sales"]["post"]
    assert {"200", "201", "400", "413", "415", "422", "503"} <= set(post["responses"])
    assert "422" in doc["paths"]["/reports/top-stores"]["get"]["responses"]
    sale = doc["components"]["schemas"]["SaleIn"]
    assert sale["required"] == ["product_id", "store_id"]
    assert sale["additionalProperties"] is False
    assert len(PRODUCTS) == 4


async def test_slow_body_gets_408(settings: config.Settings, database_url: str) -> None:
    from dataclasses import replace

    from salesreport.api import create_app

    app = create_app(replace(settings, body_timeout=0.2))

    async def slow() -> AsyncIterator[bytes]:
        yield b'{"product_id": 1,'
        # On purpose: a client that stalls mid-body, far longer than the 0.2 s the app allows it
        # (the app gives up at 0.2 s and cancels this wait; nothing here waits for an event).
        await asyncio.sleep(1)
        yield b'"store_id": 1}'

    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as http:
            response = await http.post("/sales", content=slow(), headers={"content-type": "application/json"})
    assert_problem(response, 408)


async def test_one_log_line_per_request_without_the_key(
    client: httpx.AsyncClient, capsys: pytest.CaptureFixture[str]
) -> None:
    secret = "sr_not-a-real-key-but-must-never-be-logged"
    logs.access.flush()
    capsys.readouterr()
    response = await client.get("/products", headers={"authorization": f"Bearer {secret}", "x-request-id": "abc-123"})
    assert response.headers["x-request-id"] == "abc-123"
    generated = await client.get("/stores")
    logs.access.flush()  # access lines are written after each event-loop turn
    out = capsys.readouterr().out
    assert secret not in out
    lines = [line for line in out.splitlines() if "request" in line]
    assert len(lines) == 2
    assert "abc-123" in lines[0] and "/products" in lines[0]
    assert generated.headers["x-request-id"] in lines[1]
