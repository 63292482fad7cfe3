"""The one replay rule (inside an array, inside a batch, against stored sales) and how long keys live."""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace
from datetime import timedelta

import httpx
import pytest

from salesreport import config
from tests.conftest import Clock, app_client, count_sales
from tests.test_api import assert_problem

pytestmark = pytest.mark.anyio
# Also through PgBouncer in transaction pooling mode (see conftest.database_url).
THROUGH_PGBOUNCER = True

JSON = {"content-type": "application/json"}


async def post(client: httpx.AsyncClient, body: object) -> httpx.Response:
    # Bounded: a wedged writer is a failure here, never a hang.
    return await asyncio.wait_for(client.post("/sales", content=json.dumps(body), headers=JSON), 10)


async def test_an_array_repeating_a_key_with_another_instant_is_422_and_the_writer_goes_on(
    client: httpx.AsyncClient, settings: config.Settings, clock: Clock
) -> None:
    # The first item is dated on arrival (the clock's now); the second names another instant.
    body = [
        {"product_id": 1, "store_id": 1, "idempotency_key": "b"},
        {"product_id": 1, "store_id": 1, "sold_at": "2026-11-01T10:00:00Z", "idempotency_key": "b"},
    ]
    problem = assert_problem(await post(client, body), 422)
    assert problem["errors"] == [
        {"field": "idempotency_key", "index": 1, "message": "already used for a different sale of this store"}
    ]
    assert await count_sales(settings) == 0
    # The writer still writes.
    assert (await post(client, {"product_id": 1, "store_id": 1, "idempotency_key": "c"})).status_code == 201


async def test_a_repeat_inside_an_array_is_judged_like_a_stored_sale(client: httpx.AsyncClient, clock: Clock) -> None:
    now = clock().isoformat()
    same = [
        {"product_id": 1, "store_id": 1, "idempotency_key": "a"},
        {"product_id": 1, "store_id": 1, "sold_at": now, "idempotency_key": "a"},  # the arrival instant
        {"product_id": 1, "store_id": 1, "idempotency_key": "a"},  # no sold_at: matches any
    ]
    response = await post(client, same)
    assert response.status_code == 201
    assert len({sale["id"] for sale in response.json()}) == 1
    # The same three against the stored sale: all replays.
    again = await post(client, same)
    assert again.status_code == 200
    assert again.json() == response.json()
    # And with another instant, against the stored sale: the same conflict as inside an array.
    other = {"product_id": 1, "store_id": 1, "sold_at": "2026-11-01T10:00:00Z", "idempotency_key": "a"}
    assert assert_problem(await post(client, other), 422)["errors"][0]["field"] == "idempotency_key"


async def test_a_repeat_in_another_request_of_the_same_batch_follows_the_rule(
    settings: config.Settings, clock: Clock
) -> None:
    # A long flush interval gathers the concurrent requests into one batch.
    async with app_client(replace(settings, flush_ms=200), clock) as client:
        first = {"product_id": 2, "store_id": 1, "idempotency_key": "k"}
        conflicting = {**first, "sold_at": "2026-11-01T10:00:00Z"}
        results = await asyncio.gather(post(client, first), post(client, first), post(client, conflicting))
    statuses = sorted(r.status_code for r in results)
    assert statuses == [200, 201, 422]
    ok = [r.json() for r in results if r.status_code < 300]
    assert ok[0]["id"] == ok[1]["id"]
    assert await count_sales(settings) == 1


async def test_a_key_lives_for_its_lifetime_then_may_be_used_again(settings: config.Settings, clock: Clock) -> None:
    lifetime = timedelta(days=7)
    async with app_client(replace(settings, key_lifetime=lifetime), clock) as client:
        sale = {"product_id": 1, "store_id": 1, "quantity": 2, "idempotency_key": "till-1"}
        first = await post(client, sale)
        assert first.status_code == 201
        clock.advance(lifetime - timedelta(seconds=1))
        assert (await post(client, sale)).status_code == 200
        other = {**sale, "product_id": 2}
        assert (await post(client, other)).status_code == 422
        clock.advance(timedelta(seconds=2))  # the key has now outlived its lifetime
        reused = await post(client, other)
        assert reused.status_code == 201, reused.text
        assert reused.json()["id"] != first.json()["id"]
        # From now on the key names the new sale.
        assert (await post(client, other)).json() == reused.json()
        assert (await post(client, sale)).status_code == 422
    assert await count_sales(settings) == 2


async def test_a_replay_is_logged_with_the_stored_sale_id(
    client: httpx.AsyncClient, capsys: pytest.CaptureFixture[str]
) -> None:
    sale = {"product_id": 1, "store_id": 2, "idempotency_key": "logged"}
    stored = (await post(client, sale)).json()
    capsys.readouterr()
    response = await client.post("/sales", content=json.dumps(sale), headers={**JSON, "x-request-id": "retry-1"})
    assert response.status_code == 200
    lines = [line for line in capsys.readouterr().out.splitlines() if "replay answered" in line]
    assert len(lines) == 1
    assert f"sale_ids=[{stored['id']}]" in lines[0] and "request_id=retry-1" in lines[0]


async def test_repeats_of_a_stored_sale_are_replays_whichever_way_they_give_sold_at(
    settings: config.Settings, clock: Clock
) -> None:
    stored = {"product_id": 1, "store_id": 1, "quantity": 2, "sold_at": "2026-11-20T11:00:00Z", "idempotency_key": "k1"}
    without = {key: value for key, value in stored.items() if key != "sold_at"}
    async with app_client(replace(settings, flush_ms=200), clock) as client:
        first = await post(client, stored)
        assert first.status_code == 201
        # In one array: the item without sold_at is dated on arrival, but it repeats the stored sale.
        both = await post(client, [without, stored])
        assert both.status_code == 200, both.text
        assert both.json() == [first.json(), first.json()]
        # As two requests written in one batch.
        results = await asyncio.gather(post(client, without), post(client, stored))
        assert [r.status_code for r in results] == [200, 200], [r.text for r in results]
    assert await count_sales(settings) == 1
