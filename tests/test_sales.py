"""POST /sales: validation, replays, all-or-nothing arrays, exact money."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from salesreport import config
from tests.conftest import count_sales
from tests.test_api import assert_problem

pytestmark = pytest.mark.anyio


async def post(client: httpx.AsyncClient, body: object) -> httpx.Response:
    return await client.post("/sales", content=json.dumps(body), headers={"content-type": "application/json"})


async def test_one_sale_is_stored_and_echoed(client: httpx.AsyncClient, settings: config.Settings) -> None:
    before = datetime.now(UTC)
    response = await post(client, {"product_id": 2, "store_id": 1, "quantity": 3})
    assert response.status_code == 201, response.text
    sale = response.json()
    assert sale["product_id"] == 2 and sale["store_id"] == 1 and sale["quantity"] == 3
    assert sale["unit_price"] == "45.50"
    assert sale["amount"] == "136.50"
    assert sale["idempotency_key"] is None
    assert isinstance(sale["id"], int)
    sold_at = datetime.fromisoformat(sale["sold_at"])
    assert sold_at.utcoffset() == timedelta(0)
    assert before - timedelta(seconds=1) <= sold_at <= datetime.now(UTC) + timedelta(seconds=1)
    assert await count_sales(settings) == 1


async def test_sold_at_with_offset_is_answered_in_utc(client: httpx.AsyncClient) -> None:
    response = await post(client, {"product_id": 1, "store_id": 2, "sold_at": "2026-10-31T20:30:00+03:00"})
    assert response.status_code == 201
    assert response.json()["sold_at"] == "2026-10-31T17:30:00Z"


async def test_array_keeps_order_and_is_201(client: httpx.AsyncClient) -> None:
    body = [{"product_id": p, "store_id": s} for p, s in [(3, 1), (1, 2), (2, 3)]]
    response = await post(client, body)
    assert response.status_code == 201
    answer = response.json()
    assert [(a["product_id"], a["store_id"]) for a in answer] == [(3, 1), (1, 2), (2, 3)]
    assert len({a["id"] for a in answer}) == 3


async def test_replay_returns_first_sale_with_200(client: httpx.AsyncClient, settings: config.Settings) -> None:
    sale = {"product_id": 1, "store_id": 1, "quantity": 2, "idempotency_key": "pos-1-0001"}
    first = await post(client, sale)
    assert first.status_code == 201
    again = await post(client, sale)
    assert again.status_code == 200
    assert again.json() == first.json()
    # The same key in another store is another sale.
    other = await post(client, {**sale, "store_id": 2})
    assert other.status_code == 201
    assert await count_sales(settings) == 2


async def test_replay_with_sold_at_compares_the_instant(client: httpx.AsyncClient) -> None:
    sale = {"product_id": 1, "store_id": 1, "sold_at": "2026-11-01T10:00:00Z", "idempotency_key": "k"}
    assert (await post(client, sale)).status_code == 201
    same_instant = {**sale, "sold_at": "2026-11-01T13:00:00+03:00"}
    assert (await post(client, same_instant)).status_code == 200
    other_instant = {**sale, "sold_at": "2026-11-01T10:00:01Z"}
    body = assert_problem(await post(client, other_instant), 422)
    assert body["errors"][0]["field"] == "idempotency_key"


async def test_conflicting_replay_is_422(client: httpx.AsyncClient, settings: config.Settings) -> None:
    assert (await post(client, {"product_id": 1, "store_id": 1, "idempotency_key": "k"})).status_code == 201
    body = assert_problem(await post(client, {"product_id": 2, "store_id": 1, "idempotency_key": "k"}), 422)
    assert body["errors"] == [
        {"field": "idempotency_key", "message": "already used for a different sale of this store"}
    ]
    assert await count_sales(settings) == 1


async def test_mixed_array_of_replay_and_new_is_201(client: httpx.AsyncClient, settings: config.Settings) -> None:
    first = (await post(client, {"product_id": 1, "store_id": 1, "idempotency_key": "a"})).json()
    response = await post(
        client,
        [
            {"product_id": 1, "store_id": 1, "idempotency_key": "a"},
            {"product_id": 2, "store_id": 1, "idempotency_key": "b"},
        ],
    )
    assert response.status_code == 201
    assert response.json()[0] == first
    replay = await post(
        client,
        [
            {"product_id": 1, "store_id": 1, "idempotency_key": "a"},
            {"product_id": 2, "store_id": 1, "idempotency_key": "b"},
        ],
    )
    assert replay.status_code == 200
    assert replay.json() == response.json()
    assert await count_sales(settings) == 2


async def test_duplicate_keys_inside_an_array(client: httpx.AsyncClient, settings: config.Settings) -> None:
    same = {"product_id": 1, "store_id": 1, "idempotency_key": "dup"}
    response = await post(client, [same, same])
    assert response.status_code == 201
    a, b = response.json()
    assert a == b
    assert await count_sales(settings) == 1
    body = assert_problem(
        await post(client, [{**same, "idempotency_key": "x"}, {**same, "idempotency_key": "x", "quantity": 2}]), 422
    )
    assert body["errors"][0]["index"] == 1
    assert await count_sales(settings) == 1


async def test_array_is_all_or_nothing(client: httpx.AsyncClient, settings: config.Settings) -> None:
    good = {"product_id": 1, "store_id": 1}
    body = assert_problem(await post(client, [good, good, {"product_id": 999, "store_id": 1}]), 422)
    assert body["errors"] == [{"field": "product_id", "message": "no such product", "index": 2}]
    assert (await post(client, {"product_id": 1, "store_id": 1, "idempotency_key": "taken"})).status_code == 201
    conflict = [good, {"product_id": 2, "store_id": 1, "idempotency_key": "taken"}]
    assert_problem(await post(client, conflict), 422)
    assert await count_sales(settings) == 1


@pytest.mark.parametrize(
    ("body", "fields"),
    [
        ({"product_id": "1", "store_id": 1}, [(None, "product_id")]),
        ({"product_id": 1.5, "store_id": 1}, [(None, "product_id")]),
        ({"product_id": 1.0, "store_id": 1}, [(None, "product_id")]),
        ({"product_id": True, "store_id": 1}, [(None, "product_id")]),
        ({"product_id": 1}, [(None, "store_id")]),
        ({"product_id": 0, "store_id": -1}, [(None, "product_id"), (None, "store_id")]),
        ({"product_id": 2**63, "store_id": 1}, [(None, "product_id")]),
        ({"product_id": 1, "store_id": 1, "quantity": 0}, [(None, "quantity")]),
        ({"product_id": 1, "store_id": 1, "quantity": 10_001}, [(None, "quantity")]),
        ({"product_id": 1, "store_id": 1, "colour": "red"}, [(None, "colour")]),
        ({"product_id": 1, "store_id": 1, "sold_at": "2026-11-01T10:00:00"}, [(None, "sold_at")]),
        ({"product_id": 1, "store_id": 1, "sold_at": "yesterday"}, [(None, "sold_at")]),
        ({"product_id": 1, "store_id": 1, "sold_at": "1999-12-31T23:59:59Z"}, [(None, "sold_at")]),
        ({"product_id": 1, "store_id": 1, "idempotency_key": ""}, [(None, "idempotency_key")]),
        ({"product_id": 1, "store_id": 1, "idempotency_key": "k" * 129}, [(None, "idempotency_key")]),
        ({"product_id": 404, "store_id": 404}, [(None, "product_id"), (None, "store_id")]),
        (None, [(None, "body")]),
        (42, [(None, "body")]),
        ("sale", [(None, "body")]),
        ([], [(None, "body")]),
        ([{"product_id": 1, "store_id": 1}] * 1001, [(None, "body")]),
        (
            [{"product_id": 1, "store_id": 1}, {"product_id": "x", "store_id": 1, "extra": 1}, 7],
            [(1, "extra"), (1, "product_id"), (2, "body")],
        ),
    ],
)
async def test_invalid_sales_are_422_naming_each_field(
    client: httpx.AsyncClient, settings: config.Settings, body: object, fields: list[tuple[int | None, str]]
) -> None:
    problem = assert_problem(await post(client, body), 422)
    assert [(e.get("index"), e["field"]) for e in problem["errors"]] == fields
    assert all(e["message"] for e in problem["errors"])
    assert await count_sales(settings) == 0


async def test_sold_at_in_the_future(client: httpx.AsyncClient) -> None:
    soon = (datetime.now(UTC) + timedelta(minutes=4)).isoformat()
    assert (await post(client, {"product_id": 1, "store_id": 1, "sold_at": soon})).status_code == 201
    late = (datetime.now(UTC) + timedelta(minutes=6)).isoformat()
    problem = assert_problem(await post(client, {"product_id": 1, "store_id": 1, "sold_at": late}), 422)
    assert problem["errors"][0]["field"] == "sold_at"


@pytest.mark.parametrize(
    "body", [b"{", b'{"product_id": 1,', b"[" * 100_000, b"[" * 5000 + b"]" * 5000, b"\xff\xfe", b"", b'{"a": 1e999}']
)
async def test_malformed_json_is_400(client: httpx.AsyncClient, settings: config.Settings, body: bytes) -> None:
    response = await client.post("/sales", content=body, headers={"content-type": "application/json"})
    assert_problem(response, 400)
    assert await count_sales(settings) == 0


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", None])
async def test_non_json_content_type_is_415(client: httpx.AsyncClient, content_type: str | None) -> None:
    headers = {"content-type": content_type} if content_type else {}
    response = await client.post("/sales", content=b'{"product_id": 1, "store_id": 1}', headers=headers)
    assert_problem(response, 415)


async def test_json_with_charset_is_accepted(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/sales",
        content=b'{"product_id": 1, "store_id": 1}',
        headers={"content-type": "application/json; charset=utf-8"},
    )
    assert response.status_code == 201


async def test_body_over_one_mib_is_413(client: httpx.AsyncClient, settings: config.Settings) -> None:
    body = b'[{"product_id": 1, "store_id": 1, "idempotency_key": "' + b"x" * (1024 * 1024) + b'"}]'
    response = await client.post("/sales", content=body, headers={"content-type": "application/json"})
    assert_problem(response, 413)

    async def chunks():  # no Content-Length: the limit holds while streaming
        for _ in range(20):
            yield b" " * 65536

    response = await client.post("/sales", content=chunks(), headers={"content-type": "application/json"})
    assert_problem(response, 413)
    assert await count_sales(settings) == 0


async def test_three_dimes_make_thirty_cents(client: httpx.AsyncClient) -> None:
    for _ in range(3):
        assert (
            await post(client, {"product_id": 1, "store_id": 1, "sold_at": "2026-11-10T12:00:00Z"})
        ).status_code == 201
    top = (await client.get("/reports/top-stores", params={"month": "2026-11"})).json()
    assert top == [{"id": 1, "address": "1 Red Square, Moscow", "revenue": "0.30"}]


async def test_a_sale_is_in_the_reports_at_once(client: httpx.AsyncClient) -> None:
    now = datetime.now(UTC)
    assert (await post(client, {"product_id": 3, "store_id": 4, "quantity": 7})).status_code == 201
    # The default month is the current one in the default zone (UTC here).
    top = (await client.get("/reports/top-stores")).json()
    if now.month == datetime.now(UTC).month:
        assert top == [{"id": 4, "address": "Alexanderplatz 1, Berlin", "revenue": "8641.92"}]
    products = (await client.get("/reports/top-products")).json()
    assert products == [{"id": 3, "name": "Coffee", "quantity": 7}]


@pytest.mark.parametrize("key", ["a\u0000b", "tab\there", "line\n", "\u007f"])
async def test_idempotency_key_without_control_characters(
    client: httpx.AsyncClient, settings: config.Settings, key: str
) -> None:
    problem = assert_problem(await post(client, {"product_id": 1, "store_id": 1, "idempotency_key": key}), 422)
    assert problem["errors"][0]["field"] == "idempotency_key"
    assert await count_sales(settings) == 0
