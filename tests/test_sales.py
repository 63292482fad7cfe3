"""POST /sales: validation, replays, all-or-nothing arrays, exact money."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from typing import Any

import httpx
import pytest

from salesreport import config
from tests.conftest import Clock, app_client, count_sales, http_scope
from tests.test_api import assert_problem

pytestmark = pytest.mark.anyio
# Also through PgBouncer in transaction pooling mode (see conftest.database_url).
THROUGH_PGBOUNCER = True


async def post(client: httpx.AsyncClient, body: object) -> httpx.Response:
    return await client.post("/sales", content=json.dumps(body), headers={"content-type": "application/json"})


async def test_one_sale_is_stored_and_echoed(
    client: httpx.AsyncClient, settings: config.Settings, clock: Clock
) -> None:
    # Without sold_at the sale is dated when received: here 02:31 on 1 December in Moscow.
    clock.set("2026-11-30T23:31:00Z")
    response = await post(client, {"product_id": 2, "store_id": 1, "quantity": 3})
    assert response.status_code == 201, response.text
    sale = response.json()
    assert sale["product_id"] == 2 and sale["store_id"] == 1 and sale["quantity"] == 3
    assert sale["unit_price"] == "45.50"
    assert sale["amount"] == "136.50"
    assert sale["idempotency_key"] is None
    assert isinstance(sale["id"], int)
    assert sale["sold_at"] == "2026-11-30T23:31:00Z"
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


async def test_a_member_given_twice_counts_with_its_last_value(client: httpx.AsyncClient) -> None:
    body = b'{"product_id": 1, "store_id": 1, "quantity": 1, "idempotency_key": "k", "quantity": 3}'
    first = await client.post("/sales", content=body, headers={"content-type": "application/json"})
    assert first.status_code == 201
    assert first.json()["quantity"] == 3
    # A replay is judged on that value.
    assert (
        await post(client, {"product_id": 1, "store_id": 1, "quantity": 3, "idempotency_key": "k"})
    ).status_code == 200
    assert_problem(await post(client, {"product_id": 1, "store_id": 1, "quantity": 1, "idempotency_key": "k"}), 422)


@pytest.mark.parametrize(
    ("body", "fields"),
    [
        (b'{"product_id": "x", "product_id": 1, "store_id": 1}', [(None, "product_id")]),
        (b'{"product_id": 1, "store_id": 1, "quantity": 0, "quantity": 2}', [(None, "quantity")]),
        (
            b'[{"product_id": 1, "store_id": 1}, {"product_id": 1, "store_id": 1, "sold_at": "soon",'
            b' "sold_at": "2026-11-20T11:00:00Z"}]',
            [(1, "sold_at")],
        ),
    ],
)
async def test_a_member_given_twice_with_a_refused_value_is_422_naming_it(
    client: httpx.AsyncClient, settings: config.Settings, body: bytes, fields: list[tuple[int | None, str]]
) -> None:
    """Every value given for a member is checked, though only the last counts: a refused one is named."""
    response = await client.post("/sales", content=body, headers={"content-type": "application/json"})
    problem = assert_problem(response, 422)
    assert [(e.get("index"), e["field"]) for e in problem["errors"]] == fields
    assert problem["error_count"] == len(fields)
    assert all(e["message"] for e in problem["errors"])
    assert await count_sales(settings) == 0


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


async def test_every_sale_of_a_large_mixed_array_gets_its_own_id(client: httpx.AsyncClient) -> None:
    """Hundreds of sales, with and without keys, some repeating sales stored before and some repeating
    each other, in one array (the writers insert them in chunks and in key order): each answer names
    the sale it stands for."""
    earlier = [
        {"product_id": 1 + i % 3, "store_id": 1 + i % 4, "quantity": 1 + i % 5, "idempotency_key": f"e{i}"}
        for i in range(0, 600, 7)
    ]
    assert (await post(client, earlier)).status_code == 201
    sales: list[dict[str, object]] = []
    for i in range(600):
        sale: dict[str, object] = {"product_id": 1 + (i * 7) % 3, "store_id": 1 + (i * 5) % 4, "quantity": 1 + i % 5}
        if i % 7 == 0:
            sale = earlier[i // 7]  # a replay of a sale stored before
        elif i % 3 == 0:
            sale["idempotency_key"] = f"n{(i * 37) % 600:03d}"  # keys out of order
        elif i % 11 == 0:
            sale = {**sales[i - 1]}  # the one before again: a replay within the array if it has a key
        sales.append(sale)
    response = await post(client, sales)
    assert response.status_code == 201, response.text
    answered = response.json()
    assert len(answered) == 600
    for sale, answer in zip(sales, answered, strict=True):
        assert {k: answer[k] for k in sale} == sale
    keyless = [a["id"] for s, a in zip(sales, answered, strict=True) if "idempotency_key" not in s]
    assert len(set(keyless)) == len(keyless)
    for answer in answered:
        stored = (await client.get(f"/sales/{answer['id']}")).json()
        assert {k: stored[k] for k in answer if k != "idempotency_key"} == {
            k: v for k, v in answer.items() if k != "idempotency_key"
        }


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


@pytest.mark.parametrize(
    ("ahead", "status"),
    [
        (timedelta(minutes=4), 201),
        (timedelta(minutes=5), 201),  # "at most 5 minutes ahead"
        (timedelta(minutes=5, microseconds=1), 422),
        (timedelta(minutes=6), 422),
    ],
)
async def test_sold_at_in_the_future(client: httpx.AsyncClient, clock: Clock, ahead: timedelta, status: int) -> None:
    # Two minutes before a new year: the bound is 2027-01-01T00:03Z, whatever the date today.
    now = clock.set("2026-12-31T23:58:00Z")
    for hours in (0, -5, 10):  # the instant counts, not the offset it is written with
        sold_at = (now + ahead).astimezone(timezone(timedelta(hours=hours))).isoformat()
        sale = {"product_id": 1, "store_id": 1, "sold_at": sold_at, "idempotency_key": f"{ahead} {hours}"}
        response = await post(client, sale)
        if status == 201:
            assert response.status_code == 201, response.text
            assert datetime.fromisoformat(response.json()["sold_at"]) == now + ahead
        else:
            problem = assert_problem(response, 422)
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


async def test_a_content_length_not_a_number_is_400(client: httpx.AsyncClient, settings: config.Settings) -> None:
    body = b'{"product_id": 1, "store_id": 1}'
    for length in (b"1e3", b"-1", b"\xb2", b"32 "):
        response = await client.post(
            "/sales", content=body, headers={b"content-type": b"application/json", b"content-length": length}
        )
        assert_problem(response, 400)
    assert await count_sales(settings) == 0
    # HTTP allows leading zeros, any number of them; a length of more digits than int() takes is too large.
    headers = {"content-type": "application/json"}
    long_zeros = await client.post("/sales", content=body, headers={**headers, "content-length": "0" * 5000 + "32"})
    assert long_zeros.status_code == 201, long_zeros.text
    too_long = await client.post("/sales", content=body, headers={**headers, "content-length": "9" * 5000})
    assert_problem(too_long, 413)
    assert await count_sales(settings) == 1


async def test_body_over_one_mib_is_413(client: httpx.AsyncClient, settings: config.Settings) -> None:
    body = b'[{"product_id": 1, "store_id": 1, "idempotency_key": "' + b"x" * (1024 * 1024) + b'"}]'
    response = await client.post("/sales", content=body, headers={"content-type": "application/json"})
    assert_problem(response, 413)

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: the limit holds while streaming
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
    assert top == [
        {
            "id": 1,
            "address": "1 Red Square, Moscow",
            "revenue": "0.30",
            "gross": "0.30",
            "refunds": "0.00",
            "discounts": "0.00",
        }
    ]


async def test_a_sale_is_in_the_reports_at_once(client: httpx.AsyncClient, clock: Clock) -> None:
    # Mid-month (the clock's default instant): November in Berlin as in UTC, the default zone here.
    assert clock() == datetime.fromisoformat("2026-11-20T12:00:00Z")
    assert (await post(client, {"product_id": 3, "store_id": 4, "quantity": 7})).status_code == 201
    top = (await client.get("/reports/top-stores")).json()
    assert top == [
        {
            "id": 4,
            "address": "Alexanderplatz 1, Berlin",
            "revenue": "8641.92",
            "gross": "8641.92",
            "refunds": "0.00",
            "discounts": "0.00",
        }
    ]
    products = (await client.get("/reports/top-products")).json()
    assert products == [{"id": 3, "name": "Coffee", "quantity": 7, "sold": 7, "returned": 0, "revenue": "8641.92"}]


# Store ids whose local month, at the instant, is the default month in the zone (and the other stores).
@pytest.mark.parametrize(
    ("instant", "zone", "month", "stores", "others"),
    [
        # The last half hour of November in UTC: already December in Moscow, Vladivostok and Berlin.
        ("2026-11-30T23:31:00Z", "UTC", "2026-11", [3], ("2026-12", [4, 2, 1])),
        ("2026-11-30T23:31:00Z", "Europe/Berlin", "2026-12", [4, 2, 1], ("2026-11", [3])),
        ("2026-11-30T23:31:00Z", "America/New_York", "2026-11", [3], ("2026-12", [4, 2, 1])),
        # Two minutes before the new year in UTC: 2027 in every store but New York.
        ("2026-12-31T23:58:00Z", "UTC", "2026-12", [3], ("2027-01", [4, 2, 1])),
        ("2026-12-31T23:58:00Z", "Asia/Vladivostok", "2027-01", [4, 2, 1], ("2026-12", [3])),
        # A minute before New York's clocks go back (01:59 EDT): November everywhere.
        ("2026-11-01T05:59:00Z", "America/New_York", "2026-11", [4, 3, 2, 1], None),
        # 23:59 EDT on 31 October in New York, and already November everywhere else.
        ("2026-11-01T03:59:00Z", "America/New_York", "2026-10", [3], ("2026-11", [4, 2, 1])),
        # A minute before Berlin's clocks go forward (01:59 CET on 29 March): March everywhere.
        ("2026-03-29T00:59:00Z", "Europe/Berlin", "2026-03", [4, 3, 2, 1], None),
    ],
)
async def test_top_stores_defaults_to_the_current_month_of_the_default_zone(
    settings: config.Settings,
    clock: Clock,
    instant: str,
    zone: str,
    month: str,
    stores: list[int],
    others: tuple[str, list[int]] | None,
) -> None:
    clock.set(instant)
    async with app_client(replace(settings, default_timezone=zone), clock) as http:
        # One sale per store, dated when received; store n sells n loaves, so that the order is 4, 3, 2, 1.
        for store in (1, 2, 3, 4):
            response = await post(http, {"product_id": 2, "store_id": store, "quantity": store})
            assert response.status_code == 201, response.text
            assert datetime.fromisoformat(response.json()["sold_at"]) == clock()
        default = await http.get("/reports/top-stores")
        assert default.status_code == 200, default.text
        assert [row["id"] for row in default.json()] == stores
        assert default.json() == (await http.get("/reports/top-stores", params={"month": month})).json()
        if others is not None:
            other_month, other_stores = others
            other = (await http.get("/reports/top-stores", params={"month": other_month})).json()
            assert [row["id"] for row in other] == other_stores
        # top-products has no default month: all time.
        assert (await http.get("/reports/top-products")).json() == [
            {"id": 2, "name": "Bread", "quantity": 10, "sold": 10, "returned": 0, "revenue": "455.00"}
        ]


@pytest.mark.parametrize("key", ["a\u0000b", "tab\there", "line\n", "\u007f"])
async def test_idempotency_key_without_control_characters(
    client: httpx.AsyncClient, settings: config.Settings, key: str
) -> None:
    problem = assert_problem(await post(client, {"product_id": 1, "store_id": 1, "idempotency_key": key}), 422)
    assert problem["errors"][0]["field"] == "idempotency_key"
    assert await count_sales(settings) == 0


@pytest.mark.parametrize(
    ("path", "content_type"), [("/sales", b"application/json"), ("/signin", b"application/x-www-form-urlencoded")]
)
async def test_a_body_that_ends_before_it_is_whole_is_400(
    client: httpx.AsyncClient, settings: config.Settings, path: str, content_type: bytes
) -> None:
    """The client went away mid-body, or the server could not frame it (a malformed chunk, which the
    app hears as a disconnect): the client's fault, a 400, not an unhandled error and a 500."""
    messages: list[dict[str, Any]] = [
        {"type": "http.request", "body": b'{"product_id": 1, ', "more_body": True},
        {"type": "http.disconnect"},
    ]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return messages.pop(0)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    headers = [(b"host", b"127.0.0.1"), (b"content-type", content_type), (b"content-length", b"40")]
    scope = http_scope("POST", path, headers)
    await client.app(scope, receive, send)  # type: ignore[attr-defined]
    assert sent[0]["status"] == 400
    assert json.loads(b"".join(m.get("body", b"") for m in sent[1:]))["title"] == "Bad Request"
    assert await count_sales(settings) == 0
