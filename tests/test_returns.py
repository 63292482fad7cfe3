"""POST /returns and GET /sales/{id}: the bound, replays, accounting in the month and store taking goods back.

Every test runs on SQLite and on PostgreSQL, through the real ASGI app. On PostgreSQL, concurrent
returns of one sale are also sent through two apps at once (two workers, each with its own writer).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import defaultdict
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

from salesreport import config, db
from salesreport.api import create_app
from tests.conftest import STORES, Clock, eventually, scalar
from tests.test_api import assert_problem
from tests.test_auth import create
from tests.test_cli import cli

pytestmark = pytest.mark.anyio
# Also through PgBouncer in transaction pooling mode (see conftest.database_url).
THROUGH_PGBOUNCER = True

JSON = {"content-type": "application/json"}
ADDRESS = {s["id"]: s["address"] for s in STORES}
ZONES = {s["id"]: ZoneInfo(s["timezone"]) for s in STORES}


async def sell(client: httpx.AsyncClient, body: object, key: str | None = None) -> Any:
    headers = {**JSON, "authorization": f"Bearer {key}"} if key else JSON
    response = await client.post("/sales", content=json.dumps(body), headers=headers)
    assert response.status_code == 201, response.text
    return response.json()


async def give_back(client: httpx.AsyncClient, body: object, key: str | None = None) -> httpx.Response:
    headers = {**JSON, "authorization": f"Bearer {key}"} if key else JSON
    return await client.post("/returns", content=json.dumps(body), headers=headers)


async def returned(client: httpx.AsyncClient, body: object, key: str | None = None) -> Any:
    response = await give_back(client, body, key)
    assert response.status_code == 201, response.text
    return response.json()


async def count_returns(settings: config.Settings) -> int:
    return int(await scalar(settings, sa.select(sa.func.count()).select_from(db.returns)))


async def units_returned(settings: config.Settings, sale_id: int) -> int:
    return int(await scalar(settings, sa.select(db.sales.c.returned).where(db.sales.c.id == sale_id)))


async def top_stores(client: httpx.AsyncClient, month: str) -> list[dict[str, Any]]:
    response = await client.get("/reports/top-stores", params={"month": month})
    assert response.status_code == 200, response.text
    rows: list[dict[str, Any]] = response.json()
    return rows


async def top_products(client: httpx.AsyncClient, month: str | None = None) -> list[dict[str, Any]]:
    response = await client.get("/reports/top-products", params={"month": month} if month else {})
    assert response.status_code == 200, response.text
    rows: list[dict[str, Any]] = response.json()
    return rows


def store_row(store_id: int, revenue: str, gross: str, refunds: str, discounts: str = "0.00") -> dict[str, Any]:
    return {
        "id": store_id,
        "address": ADDRESS[store_id],
        "revenue": revenue,
        "gross": gross,
        "refunds": refunds,
        "discounts": discounts,
    }


# --- one return ---------------------------------------------------------------------------------


async def test_a_return_is_stored_and_echoed(client: httpx.AsyncClient, settings: config.Settings) -> None:
    sale = await sell(
        client,
        {"product_id": 2, "store_id": 1, "quantity": 3, "unit_price": "40.00", "sold_at": "2026-11-02T10:00:00Z"},
    )
    first = await returned(client, {"sale_id": sale["id"], "quantity": 2, "idempotency_key": "r-1"})
    assert isinstance(first["id"], int)
    assert {k: v for k, v in first.items() if k != "id"} == {
        "sale_id": sale["id"],
        "store_id": 1,  # the sale's store by default
        "product_id": 2,
        "quantity": 2,
        "unit_price": "40.00",  # the price charged, not the catalog's 45.50
        "amount": "80.00",
        "returned_at": "2026-11-20T12:00:00Z",  # the clock's now by default
        "idempotency_key": "r-1",
    }
    # Quantity 1 by default; returned_at with an offset is answered in UTC; no key.
    second = await returned(client, {"sale_id": sale["id"], "returned_at": "2026-11-03T12:00:00+03:00"})
    assert (second["quantity"], second["amount"], second["idempotency_key"]) == (1, "40.00", None)
    assert second["returned_at"] == "2026-11-03T09:00:00Z"
    assert second["id"] > first["id"]
    assert await count_returns(settings) == 2
    assert await units_returned(settings, sale["id"]) == 3
    # Nothing is left to return.
    problem = assert_problem(await give_back(client, {"sale_id": sale["id"]}), 422)
    assert [e["field"] for e in problem["errors"]] == ["quantity"]


async def test_a_sale_with_its_returns(client: httpx.AsyncClient) -> None:
    sale = await sell(client, {"product_id": 3, "store_id": 2, "quantity": 5, "sold_at": "2026-11-01T00:00:00Z"})
    detail = await client.get(f"/sales/{sale['id']}")
    assert detail.status_code == 200, detail.text
    assert detail.json() == {**sale, "returns": []}
    answers = [
        await returned(client, {"sale_id": sale["id"], "quantity": 2, "store_id": 4}),
        await returned(
            client, [{"sale_id": sale["id"]}, {"sale_id": sale["id"], "returned_at": "2026-11-05T00:00:00Z"}]
        ),
    ]
    flat = [answers[0], *answers[1]]
    assert [r["store_id"] for r in flat] == [4, 2, 2]
    assert (await client.get(f"/sales/{sale['id']}")).json() == {**sale, "returns": flat}
    # Another sale's returns are its own.
    other = await sell(client, {"product_id": 3, "store_id": 2})
    assert (await client.get(f"/sales/{other['id']}")).json()["returns"] == []


async def test_an_unknown_sale_is_404(client: httpx.AsyncClient) -> None:
    for raw in ("1", "999", "0", "abc", "-1", "9223372036854775808"):
        assert_problem(await client.get(f"/sales/{raw}"), 404)


async def test_an_array_is_stored_in_order(client: httpx.AsyncClient, settings: config.Settings) -> None:
    a = await sell(client, {"product_id": 1, "store_id": 1, "quantity": 4})
    b = await sell(client, {"product_id": 3, "store_id": 3, "quantity": 1, "unit_price": "1000.00"})
    answer = await returned(
        client,
        [
            {"sale_id": b["id"], "idempotency_key": "x"},
            {"sale_id": a["id"], "quantity": 3, "store_id": 2},
            {"sale_id": a["id"]},
        ],
    )
    assert [(r["sale_id"], r["store_id"], r["quantity"], r["amount"]) for r in answer] == [
        (b["id"], 3, 1, "1000.00"),
        (a["id"], 2, 3, "0.30"),
        (a["id"], 1, 1, "0.10"),
    ]
    assert await count_returns(settings) == 3
    assert (await units_returned(settings, a["id"]), await units_returned(settings, b["id"])) == (4, 1)
    # A thousand at once, the most an array may hold.
    many = await sell(client, {"product_id": 9_000_000_000_000_000_000, "store_id": 4, "quantity": 1000})
    answer = await returned(client, [{"sale_id": many["id"]}] * 1000)
    assert len(answer) == 1000 and len({r["id"] for r in answer}) == 1000
    assert all(r["product_id"] == 9_000_000_000_000_000_000 and r["amount"] == "0.01" for r in answer)
    assert await units_returned(settings, many["id"]) == 1000


# --- replays ------------------------------------------------------------------------------------


async def test_a_replay_is_answered_with_the_first_return(
    client: httpx.AsyncClient, settings: config.Settings, clock: Clock
) -> None:
    sale = await sell(client, {"product_id": 2, "store_id": 1, "quantity": 2, "sold_at": "2026-11-02T10:00:00Z"})
    body = {"sale_id": sale["id"], "idempotency_key": "ret-1"}
    first = await returned(client, body)
    clock.advance(minutes=3)  # a retry, later
    for retry in (
        body,
        {**body, "quantity": 1},
        {**body, "store_id": 1},
        {**body, "returned_at": "2026-11-20T15:00:00+03:00"},  # the instant of the first, as the store writes it
    ):
        again = await give_back(client, retry)
        assert again.status_code == 200, (retry, again.text)
        assert again.json() == first
    # The same key naming another return: 422 on the key, nothing stored.
    for other in ({**body, "quantity": 2}, {**body, "returned_at": "2026-11-20T12:00:01Z"}):
        problem = assert_problem(await give_back(client, other), 422)
        assert [e["field"] for e in problem["errors"]] == ["idempotency_key"]
    assert await count_returns(settings) == 1
    # The key of a return is per store taking it back: at store 4 it is another return.
    at_4 = await give_back(client, {**body, "store_id": 4})
    assert at_4.status_code == 201, at_4.text
    # The sale is now fully returned: a retry is still a replay, not "nothing left".
    again = await give_back(client, body)
    assert again.status_code == 200, again.text
    assert again.json() == first
    # Sales and returns have keys of their own: a return may use a sale's key.
    await sell(client, {"product_id": 1, "store_id": 1, "idempotency_key": "shared"})
    other_sale = await sell(client, {"product_id": 1, "store_id": 1, "quantity": 3})
    shared = await returned(client, {"sale_id": other_sale["id"], "idempotency_key": "shared"})
    assert await count_returns(settings) == 3
    # An array of a replay and a new return: 201, the replay answered as first stored.
    mixed = await returned(
        client, [{"sale_id": other_sale["id"], "idempotency_key": "shared"}, {"sale_id": other_sale["id"]}]
    )
    assert mixed[0] == shared and mixed[1]["id"] > shared["id"]
    assert await count_returns(settings) == 4


async def test_a_return_key_lives_thirty_days(
    client: httpx.AsyncClient, settings: config.Settings, clock: Clock
) -> None:
    sale = await sell(client, {"product_id": 1, "store_id": 2, "quantity": 5})
    first = await returned(client, {"sale_id": sale["id"], "idempotency_key": "old"})
    clock.advance(days=29)
    assert (await give_back(client, {"sale_id": sale["id"], "idempotency_key": "old"})).json() == first
    assert_problem(await give_back(client, {"sale_id": sale["id"], "idempotency_key": "old", "quantity": 2}), 422)
    clock.advance(days=2)
    # Expired: the key names a new return now.
    second = await returned(client, {"sale_id": sale["id"], "idempotency_key": "old", "quantity": 2})
    assert second["id"] != first["id"] and second["quantity"] == 2
    again = await give_back(client, {"sale_id": sale["id"], "idempotency_key": "old", "quantity": 2})
    assert (again.status_code, again.json()) == (200, second)
    detail = (await client.get(f"/sales/{sale['id']}")).json()
    assert [(r["id"], r["quantity"]) for r in detail["returns"]] == [(first["id"], 1), (second["id"], 2)]
    assert await units_returned(settings, sale["id"]) == 3


async def test_a_key_twice_in_one_array(client: httpx.AsyncClient, settings: config.Settings) -> None:
    sale = await sell(client, {"product_id": 2, "store_id": 1, "quantity": 1})
    same = {"sale_id": sale["id"], "idempotency_key": "twice"}
    # The same return twice: one return (the sale had one unit), answered twice.
    a, b = await returned(client, [same, same])
    assert a == b
    assert await count_returns(settings) == 1
    assert await units_returned(settings, sale["id"]) == 1
    # A key naming two returns in one array: 422 on the second, nothing stored.
    big = await sell(client, {"product_id": 2, "store_id": 1, "quantity": 5})
    two = [
        {"sale_id": big["id"], "idempotency_key": "k"},
        {"sale_id": big["id"], "idempotency_key": "k", "quantity": 2},
    ]
    problem = assert_problem(await give_back(client, two), 422)
    assert [(e.get("index"), e["field"]) for e in problem["errors"]] == [(1, "idempotency_key")]
    assert await count_returns(settings) == 1
    # Two requests at once with one key: one return, one of them answered as a replay.
    answers = await asyncio.gather(
        *(give_back(client, {"sale_id": big["id"], "idempotency_key": "k"}) for _ in range(4))
    )
    assert sorted(r.status_code for r in answers) == [200, 200, 200, 201], [r.text for r in answers]
    assert len({r.json()["id"] for r in answers}) == 1
    assert await units_returned(settings, big["id"]) == 1


# --- the bound and other refusals ---------------------------------------------------------------


async def test_never_more_back_than_was_sold(client: httpx.AsyncClient, settings: config.Settings) -> None:
    sale = await sell(client, {"product_id": 2, "store_id": 1, "quantity": 3})
    problem = assert_problem(await give_back(client, {"sale_id": sale["id"], "quantity": 4}), 422)
    assert [e["field"] for e in problem["errors"]] == ["quantity"]
    message = problem["errors"][0]["message"]
    assert str(sale["id"]) in message and "3 of 3" in message, message
    await returned(client, {"sale_id": sale["id"], "quantity": 2})
    problem = assert_problem(await give_back(client, {"sale_id": sale["id"], "quantity": 2}), 422)
    message = problem["errors"][0]["message"]
    assert str(sale["id"]) in message and "1 of 3" in message, message
    # In an array, together over the bound: refused whole, the error at the item that crosses it.
    other = await sell(client, {"product_id": 1, "store_id": 1, "quantity": 2})
    body = [{"sale_id": other["id"]}, {"sale_id": sale["id"]}, {"sale_id": sale["id"]}]
    problem = assert_problem(await give_back(client, body), 422)
    assert [(e.get("index"), e["field"]) for e in problem["errors"]] == [(2, "quantity")]
    assert await count_returns(settings) == 1
    assert (await units_returned(settings, sale["id"]), await units_returned(settings, other["id"])) == (2, 0)
    # Exactly what is left: taken.
    await returned(client, [{"sale_id": other["id"], "quantity": 2}, {"sale_id": sale["id"]}])
    assert await units_returned(settings, sale["id"]) == 3


async def test_invalid_returns_are_422_naming_each_field(
    client: httpx.AsyncClient, settings: config.Settings, clock: Clock
) -> None:
    sale = await sell(client, {"product_id": 2, "store_id": 1, "quantity": 5, "sold_at": "2026-11-10T10:00:00Z"})
    s = sale["id"]
    cases: list[tuple[object, list[tuple[int | None, str]]]] = [
        ({"sale_id": 999_999}, [(None, "sale_id")]),
        ({"quantity": 1}, [(None, "sale_id")]),
        ({"sale_id": "1"}, [(None, "sale_id")]),
        ({"sale_id": 0}, [(None, "sale_id")]),
        ({"sale_id": 2**63 - 1}, [(None, "sale_id")]),
        ({"sale_id": 2**63}, [(None, "sale_id")]),
        ({"sale_id": s, "returned_at": "1999-12-31T23:59:59Z"}, [(None, "returned_at")]),
        ({"sale_id": s, "quantity": 0}, [(None, "quantity")]),
        ({"sale_id": s, "quantity": 10_001}, [(None, "quantity")]),
        ({"sale_id": s, "returned_at": "2026-11-10T09:59:59Z"}, [(None, "returned_at")]),  # before the sale
        ({"sale_id": s, "returned_at": "2026-11-10T12:59:59+03:00"}, [(None, "returned_at")]),
        ({"sale_id": s, "returned_at": "2026-11-20T12:05:00.000001Z"}, [(None, "returned_at")]),  # > 5 min ahead
        ({"sale_id": s, "returned_at": "2026-11-20T12:00:00"}, [(None, "returned_at")]),  # no offset
        ({"sale_id": s, "store_id": 404}, [(None, "store_id")]),
        ({"sale_id": s, "store_id": 0}, [(None, "store_id")]),
        ({"sale_id": s, "idempotency_key": ""}, [(None, "idempotency_key")]),
        ({"sale_id": s, "idempotency_key": "a\nb"}, [(None, "idempotency_key")]),
        ({"sale_id": s, "product_id": 2}, [(None, "product_id")]),
        ([{"sale_id": s}, {"sale_id": s, "store_id": 404}], [(1, "store_id")]),
        ([{"sale_id": s}, {"sale_id": 999_999}], [(1, "sale_id")]),
        ([], [(None, "body")]),
        ([{"sale_id": s}] * 1001, [(None, "body")]),
        (7, [(None, "body")]),
    ]
    for body, fields in cases:
        problem = assert_problem(await give_back(client, body), 422)
        assert [(e.get("index"), e["field"]) for e in problem["errors"]] == fields, (body, problem)
    assert await count_returns(settings) == 0
    # Exactly at the bounds: the sale's own instant, and five minutes ahead.
    await returned(client, {"sale_id": s, "returned_at": "2026-11-10T13:00:00+03:00"})
    await returned(client, {"sale_id": s, "returned_at": "2026-11-20T12:05:00Z"})
    # Malformed JSON is 400.
    response = await client.post("/returns", content=b'{"sale_id": ', headers=JSON)
    assert_problem(response, 400)


async def test_a_retired_store_takes_no_returns(
    client: httpx.AsyncClient, settings: config.Settings, database_url: str
) -> None:
    sale = await sell(client, {"product_id": 2, "store_id": 1, "quantity": 2})
    assert cli(database_url, "retire", "--store", "3").returncode == 0

    async def gone() -> bool:
        return 3 not in {s["id"] for s in (await client.get("/stores")).json()}

    await eventually(gone, what="store 3 is retired")
    problem = assert_problem(await give_back(client, {"sale_id": sale["id"], "store_id": 3}), 422)
    assert [e["field"] for e in problem["errors"]] == ["store_id"]
    assert "retired" in problem["errors"][0]["message"]
    assert await count_returns(settings) == 0
    assert (await returned(client, {"sale_id": sale["id"], "store_id": 4}))["store_id"] == 4


async def test_a_retry_of_a_return_taken_before_its_store_retired_is_a_replay(
    client: httpx.AsyncClient, database_url: str
) -> None:
    sale = await sell(client, {"product_id": 2, "store_id": 1, "quantity": 2})
    body = {"sale_id": sale["id"], "store_id": 3, "idempotency_key": "r-before"}
    first = await give_back(client, body)
    assert first.status_code == 201
    assert cli(database_url, "retire", "--store", "3").returncode == 0
    again = await give_back(client, body)
    assert again.status_code == 200, again.text
    assert again.json() == first.json()


async def test_a_return_ahead_of_its_sale_names_the_sale(client: httpx.AsyncClient, clock: Clock) -> None:
    ahead = (clock() + timedelta(minutes=4)).isoformat()
    sale = await sell(client, {"product_id": 1, "store_id": 1, "sold_at": ahead})
    problem = assert_problem(await give_back(client, {"sale_id": sale["id"]}), 422)
    assert [e["field"] for e in problem["errors"]] == ["sale_id"]
    assert "give returned_at" in problem["errors"][0]["message"]


# --- accounting ---------------------------------------------------------------------------------


async def test_a_return_counts_when_and_where_it_happens(client: httpx.AsyncClient) -> None:
    # October: three loaves at store 1 (Moscow), charged 40.00 each (5.50 off).
    october = await sell(
        client,
        {"product_id": 2, "store_id": 1, "quantity": 3, "unit_price": "40.00", "sold_at": "2026-10-15T12:00:00Z"},
    )
    # November: store 1 sells coffee.
    await sell(client, {"product_id": 3, "store_id": 1, "sold_at": "2026-11-05T12:00:00Z"})
    oct_before = await top_stores(client, "2026-10")
    assert oct_before == [store_row(1, "120.00", "120.00", "0.00", "16.50")]
    # In November one loaf comes back at store 4 (Berlin), which sold nothing, and one at store 1.
    await returned(client, {"sale_id": october["id"], "store_id": 4})
    await returned(client, {"sale_id": october["id"]})
    # October is as it was: the return counts when it happens.
    assert await top_stores(client, "2026-10") == oct_before
    # A month of returns alone is ranked, with negative revenue.
    assert await top_stores(client, "2026-11") == [
        store_row(1, "1194.56", "1234.56", "40.00"),
        store_row(4, "-40.00", "0.00", "40.00"),
    ]
    assert await top_products(client, "2026-11") == [
        {"id": 3, "name": "Coffee", "quantity": 1, "sold": 1, "returned": 0, "revenue": "1234.56"},
        {"id": 2, "name": "Bread", "quantity": -2, "sold": 0, "returned": 2, "revenue": "-80.00"},
    ]
    assert await top_products(client, "2026-10") == [
        {"id": 2, "name": "Bread", "quantity": 3, "sold": 3, "returned": 0, "revenue": "120.00"}
    ]
    assert await top_products(client) == [
        {"id": 2, "name": "Bread", "quantity": 1, "sold": 3, "returned": 2, "revenue": "40.00"},
        {"id": 3, "name": "Coffee", "quantity": 1, "sold": 1, "returned": 0, "revenue": "1234.56"},
    ]


async def test_a_return_counts_in_the_local_month_of_the_store_taking_it(client: httpx.AsyncClient) -> None:
    sale = await sell(client, {"product_id": 1, "store_id": 3, "quantity": 4, "sold_at": "2026-10-20T12:00:00Z"})
    # 20:30Z on 31 October: 06:30 on 1 November in Vladivostok, 16:30 on 31 October in New York.
    await returned(client, {"sale_id": sale["id"], "store_id": 2, "returned_at": "2026-10-31T20:30:00Z"})
    await returned(client, {"sale_id": sale["id"], "store_id": 3, "returned_at": "2026-10-31T20:30:00Z"})
    # 02:00Z on 1 November: still 31 October (22:00) in New York.
    await returned(client, {"sale_id": sale["id"], "store_id": 3, "returned_at": "2026-11-01T02:00:00Z"})
    assert await top_stores(client, "2026-10") == [store_row(3, "0.20", "0.40", "0.20")]
    assert await top_stores(client, "2026-11") == [store_row(2, "-0.10", "0.00", "0.10")]
    assert [(p["id"], p["quantity"], p["returned"]) for p in await top_products(client, "2026-11")] == [(1, -1, 1)]
    assert [(p["id"], p["quantity"], p["returned"]) for p in await top_products(client, "2026-10")] == [(1, 2, 2)]


# --- keys ---------------------------------------------------------------------------------------


async def test_pos_keys_take_returns_at_their_own_store(client: httpx.AsyncClient, settings: config.Settings) -> None:
    _, owner = await create(settings, "owner")
    _, pos1 = await create(settings, "pos", 1)
    _, pos4 = await create(settings, "pos", 4)
    sale = await sell(client, {"product_id": 2, "store_id": 1, "quantity": 5}, pos1)
    # Another store's sale may come back at this store, taken there.
    taken = await returned(client, {"sale_id": sale["id"]}, pos4)
    assert taken["store_id"] == 4
    assert (await returned(client, {"sale_id": sale["id"], "store_id": 4}, pos4))["store_id"] == 4
    # Not at another store.
    problem = assert_problem(await give_back(client, {"sale_id": sale["id"], "store_id": 1}, pos4), 403)
    assert [e["field"] for e in problem["errors"]] == ["store_id"]
    body = [{"sale_id": sale["id"]}, {"sale_id": sale["id"], "store_id": 1}]
    problem = assert_problem(await give_back(client, body, pos4), 403)
    assert [(e.get("index"), e["field"]) for e in problem["errors"]] == [(1, "store_id")]
    # Without a key, or with a bad one: 401.
    assert_problem(await give_back(client, {"sale_id": sale["id"]}), 401)
    assert_problem(await give_back(client, {"sale_id": sale["id"]}, "sr_wrong"), 401)
    assert await count_returns(settings) == 2
    # The owner may take a return anywhere.
    assert (await returned(client, {"sale_id": sale["id"], "store_id": 3}, owner))["store_id"] == 3
    # Reading a sale: the owner, and the till of the store that sold it.
    for key in (owner, pos1):
        detail = await client.get(f"/sales/{sale['id']}", headers={"authorization": f"Bearer {key}"})
        assert detail.status_code == 200, detail.text
        assert [r["store_id"] for r in detail.json()["returns"]] == [4, 4, 3]
    assert_problem(await client.get(f"/sales/{sale['id']}", headers={"authorization": f"Bearer {pos4}"}), 403)
    assert_problem(await client.get(f"/sales/{sale['id']}"), 401)
    for key in (owner, pos1):
        assert_problem(await client.get("/sales/999", headers={"authorization": f"Bearer {key}"}), 404)


# --- concurrency --------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def another_worker(settings: config.Settings, clock: Clock) -> AsyncIterator[httpx.AsyncClient]:
    """A second app on the same database: another worker, with its own writer and connections."""
    app = create_app(settings, clock=clock)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as http:
            yield http


async def test_concurrent_returns_never_exceed_the_sale(
    client: httpx.AsyncClient, settings: config.Settings, clock: Clock, database_url: str
) -> None:
    a = await sell(client, {"product_id": 2, "store_id": 1, "quantity": 10})
    b = await sell(client, {"product_id": 3, "store_id": 2, "quantity": 4})
    async with contextlib.AsyncExitStack() as stack:
        workers = [client]
        if not settings.is_sqlite:
            workers.append(await stack.enter_async_context(another_worker(settings, clock)))
        # Sixty one-unit returns of a sale of ten, from every worker at once; half with keys.
        bodies: list[object] = [
            {"sale_id": a["id"], "store_id": 1 + i % 4, **({"idempotency_key": f"c-{i}"} if i % 2 else {})}
            for i in range(60)
        ]
        # Arrays returning one unit of each of two sales, in both orders (locks taken in any order would deadlock).
        bodies += [
            [{"sale_id": b["id"]}, {"sale_id": a["id"]}] if i % 2 else [{"sale_id": a["id"]}, {"sale_id": b["id"]}]
            for i in range(10)
        ]
        answers = await asyncio.gather(*(give_back(workers[i % len(workers)], body) for i, body in enumerate(bodies)))
    statuses = [r.status_code for r in answers]
    assert set(statuses) <= {201, 422}, [(r.status_code, r.text) for r in answers if r.status_code not in (201, 422)]
    for r in answers:
        if r.status_code == 422:
            assert {e["field"] for e in r.json()["errors"]} == {"quantity"}, r.text
    units: dict[int, int] = defaultdict(int)
    for r in answers:
        if r.status_code == 201:
            for item in r.json() if isinstance(r.json(), list) else [r.json()]:
                units[item["sale_id"]] += item["quantity"]
    assert units[a["id"]] == 10, statuses
    assert units[b["id"]] <= 4
    assert (await units_returned(settings, a["id"]), await units_returned(settings, b["id"])) == (10, units[b["id"]])
    detail = (await client.get(f"/sales/{a['id']}")).json()
    assert sum(r["quantity"] for r in detail["returns"]) == 10
    refunds = sum(Decimal(r["refunds"]) for r in await top_stores(client, "2026-11"))
    assert refunds == Decimal("455.00") + units[b["id"]] * Decimal("1234.56")
    checked = cli(database_url, "check")
    assert checked.returncode == 0, checked.stdout


async def test_one_key_from_every_worker_at_once_is_one_return(
    client: httpx.AsyncClient, settings: config.Settings, clock: Clock
) -> None:
    a = await sell(client, {"product_id": 2, "store_id": 1, "quantity": 10})
    b = await sell(client, {"product_id": 1, "store_id": 1, "quantity": 10})
    async with contextlib.AsyncExitStack() as stack:
        workers = [client]
        if not settings.is_sqlite:
            workers.append(await stack.enter_async_context(another_worker(settings, clock)))
        # The same return, sent through every worker at once: stored once, the others are replays.
        same = {"sale_id": a["id"], "quantity": 2, "idempotency_key": "one"}
        answers = await asyncio.gather(*(give_back(workers[i % len(workers)], same) for i in range(8)))
        assert sorted(r.status_code for r in answers) == [200] * 7 + [201], [r.text for r in answers]
        assert len({json.dumps(r.json(), sort_keys=True) for r in answers}) == 1
        # One key (at store 1) for returns of two different sales at once: one is stored, the other refused.
        rival = [{"sale_id": sale["id"], "idempotency_key": "two"} for sale in (a, b)]
        answers = await asyncio.gather(*(give_back(workers[i % len(workers)], body) for i, body in enumerate(rival)))
        assert sorted(r.status_code for r in answers) == [201, 422], [r.text for r in answers]
        refused = next(r for r in answers if r.status_code == 422)
        assert [e["field"] for e in refused.json()["errors"]] == ["idempotency_key"]
    assert await units_returned(settings, a["id"]) + await units_returned(settings, b["id"]) == 3
    assert await count_returns(settings) == 2


# --- check and repair ---------------------------------------------------------------------------


async def corrupt(settings: config.Settings, statement: Any) -> None:
    database = db.connect(settings)
    try:
        async with database.writer.begin() as conn:
            await conn.execute(statement)
    finally:
        await database.dispose()


async def test_check_sees_returns_and_repair_restores_them(
    client: httpx.AsyncClient, settings: config.Settings, database_url: str
) -> None:
    sale = await sell(client, {"product_id": 2, "store_id": 1, "quantity": 4, "sold_at": "2026-10-15T12:00:00Z"})
    await returned(client, {"sale_id": sale["id"], "store_id": 4, "quantity": 2})
    await returned(client, {"sale_id": sale["id"]})
    await sell(client, {"product_id": 1, "store_id": 4, "unit_price": "0.05"})

    async def reports() -> list[Any]:
        return [
            await top_stores(client, "2026-10"),
            await top_stores(client, "2026-11"),
            await top_products(client),
            await top_products(client, "2026-11"),
            (await client.get(f"/sales/{sale['id']}")).json(),
        ]

    before = await reports()
    # A rollup's refunds and a sale's count of returned units (the bound would let too much back), by hand.
    sm = db.store_month
    await corrupt(
        settings,
        sa.update(sm).where(sm.c.store_id == 4, sm.c.month == 202611).values(refunds=sm.c.refunds + 1),
    )
    await corrupt(settings, sa.update(db.sales).where(db.sales.c.id == sale["id"]).values(returned=0))
    broken = cli(database_url, "check")
    assert broken.returncode == 1, broken.stdout
    assert "store_month (4, 202611)" in broken.stdout, broken.stdout
    assert f"sales.returned ({sale['id']},)" in broken.stdout, broken.stdout
    repaired = cli(database_url, "check", "--repair")
    assert repaired.returncode == 0, repaired.stderr
    checked = cli(database_url, "check")
    assert checked.returncode == 0, checked.stdout
    assert await units_returned(settings, sale["id"]) == 3
    assert await reports() == before
    problem = assert_problem(await give_back(client, {"sale_id": sale["id"], "quantity": 2}), 422)
    assert "1 of 4" in problem["errors"][0]["message"]


# --- a property: net revenue is sales less refunds ----------------------------------------------

MONTHS = ["2026-07", "2026-08", "2026-09", "2026-10", "2026-11"]

sales_drawn = st.lists(
    st.tuples(
        st.sampled_from([1, 2, 3, 9_000_000_000_000_000_000]),  # product
        st.sampled_from([1, 2, 3, 4]),  # store
        st.integers(0, len(MONTHS) - 1),  # month
        st.integers(1, 6),  # quantity
        st.one_of(st.none(), st.integers(0, 300_000)),  # unit price in cents, or the catalog's
        st.integers(0, 28 * 24 * 60 - 1),  # minute of the month, from the 1st at 00:00Z
    ),
    min_size=1,
    max_size=6,
)
returns_drawn = st.lists(
    st.tuples(
        st.integers(0, 99),  # which sale (modulo how many)
        st.integers(1, 4),  # quantity (perhaps more than is left: then refused)
        st.one_of(st.none(), st.sampled_from([1, 2, 3, 4])),  # the store taking it back
        st.one_of(st.none(), st.integers(0, 150 * 24 * 60)),  # minutes after the sale, or now
    ),
    max_size=8,
)


def _local_month(instant: datetime, store_id: int) -> str:
    local = instant.astimezone(ZONES[store_id])
    return f"{local.year:04d}-{local.month:02d}"


@pytest.mark.anyio
@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(sales=sales_drawn, returns=returns_drawn, as_array=st.booleans())
async def test_net_revenue_is_sales_less_refunds(
    client: httpx.AsyncClient,
    clock: Clock,
    sales: list[tuple[int, int, int, int, int | None, int]],
    returns: list[tuple[int, int, int | None, int | None]],
    as_array: bool,
) -> None:
    # The examples share one database: each compares what its own requests added to the reports.
    now = clock()

    async def revenues() -> dict[tuple[int, str], tuple[Decimal, Decimal]]:
        table = {}
        for month in ["2026-06", *MONTHS]:  # a sale on 1 July at 00:00Z is in June in New York
            for row in await top_stores(client, month):
                table[row["id"], month] = (Decimal(row["revenue"]), Decimal(row["refunds"]))
        return table

    before = await revenues()
    body = []
    for product, store, month, quantity, cents, minute in sales:
        sold_at = datetime.fromisoformat(f"{MONTHS[month]}-01T00:00:00+00:00") + timedelta(minutes=minute)
        sold_at = min(sold_at, now)  # no sale from the future
        sale: dict[str, Any] = {"product_id": product, "store_id": store, "quantity": quantity}
        sale["sold_at"] = sold_at.isoformat()
        if cents is not None:
            sale["unit_price"] = f"{cents // 100}.{cents % 100:02d}"
        body.append(sale)
    stored = await sell(client, body)
    expected: dict[tuple[int, str], Decimal] = defaultdict(Decimal)
    refunds: dict[tuple[int, str], Decimal] = defaultdict(Decimal)
    left = {}
    for sale in stored:
        sold_at = datetime.fromisoformat(sale["sold_at"])
        expected[sale["store_id"], _local_month(sold_at, sale["store_id"])] += Decimal(sale["amount"])
        assert Decimal(sale["amount"]) == Decimal(sale["unit_price"]) * sale["quantity"]
        left[sale["id"]] = sale["quantity"]
    items = []
    for which, quantity, taken_by, minutes_after in returns:
        sale = stored[which % len(stored)]
        item: dict[str, Any] = {"sale_id": sale["id"], "quantity": quantity}
        if taken_by is not None:
            item["store_id"] = taken_by
        if minutes_after is not None:
            instant = min(datetime.fromisoformat(sale["sold_at"]) + timedelta(minutes=minutes_after), now)
            item["returned_at"] = instant.isoformat()
        items.append(item)
    note(f"sales={body} returns={items} as_array={as_array}")

    def account(item: dict[str, Any], answer: dict[str, Any]) -> None:
        sale = next(s for s in stored if s["id"] == item["sale_id"])
        assert answer["store_id"] == item.get("store_id", sale["store_id"])
        assert answer["quantity"] == item["quantity"]
        assert answer["unit_price"] == sale["unit_price"]
        refund = Decimal(sale["unit_price"]) * item["quantity"]
        assert Decimal(answer["amount"]) == refund
        key = (answer["store_id"], _local_month(datetime.fromisoformat(answer["returned_at"]), answer["store_id"]))
        expected[key] -= refund
        refunds[key] += refund

    if as_array and items:
        fits = dict(left)
        for item in items:
            fits[item["sale_id"]] -= item["quantity"]
        response = await give_back(client, items)
        if min(fits.values()) >= 0:
            assert response.status_code == 201, response.text
            for item, answer in zip(items, response.json(), strict=True):
                account(item, answer)
        else:
            assert response.status_code == 422, response.text
    else:
        for item in items:
            response = await give_back(client, item)
            if item["quantity"] <= left[item["sale_id"]]:
                assert response.status_code == 201, response.text
                left[item["sale_id"]] -= item["quantity"]
                account(item, response.json())
            else:
                assert response.status_code == 422, response.text
                assert [e["field"] for e in response.json()["errors"]] == ["quantity"]
    after = await revenues()
    zero = (Decimal(0), Decimal(0))
    for key in sorted(before.keys() | after.keys() | expected.keys()):
        gained = after.get(key, zero)[0] - before.get(key, zero)[0]
        refunded = after.get(key, zero)[1] - before.get(key, zero)[1]
        assert (gained, refunded) == (expected.get(key, 0), refunds.get(key, 0)), key
