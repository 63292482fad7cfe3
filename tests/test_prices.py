"""Prices as charged, the catalog's price history, discounts, retired products and stores, report limits.

Every test runs on SQLite and on PostgreSQL, through the real ASGI app. A change made by the command
line (``import``, ``retire``) reaches a running app at once on SQLite and at the worker's next read of the
change counters, a moment later, on PostgreSQL: tests poll for it with ``eventually`` before they rely on it.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from salesreport import config, db
from tests.conftest import Clock, count_sales, eventually, scalar, seed
from tests.test_api import assert_problem
from tests.test_cli import cli, write

pytestmark = pytest.mark.anyio

JSON = {"content-type": "application/json"}
BREAD_AT_50 = "id,name,price\n2,Bread,50.00\n"


async def post(client: httpx.AsyncClient, body: object) -> httpx.Response:
    return await client.post("/sales", content=json.dumps(body), headers=JSON)


async def sell(client: httpx.AsyncClient, body: object) -> Any:
    response = await post(client, body)
    assert response.status_code == 201, response.text
    return response.json()


async def history(client: httpx.AsyncClient, product_id: int) -> list[dict[str, Any]]:
    response = await client.get(f"/products/{product_id}")
    assert response.status_code == 200, response.text
    prices: list[dict[str, Any]] = response.json()["prices"]
    return prices


async def history_has(client: httpx.AsyncClient, product_id: int, entries: int) -> None:
    """Wait until the app shows ``entries`` prices for the product (PostgreSQL: the worker noticed the change)."""

    async def loaded() -> bool:
        return len(await history(client, product_id)) == entries

    await eventually(loaded, what=f"product {product_id} has {entries} prices")


def import_products(database_url: str, tmp_path: Path, text: str, *extra: str) -> str:
    done = cli(database_url, "import", "--products", write(tmp_path / "p.csv", text), *extra)
    assert done.returncode == 0, done.stderr
    return done.stdout


async def current_prices(client: httpx.AsyncClient, query: str = "") -> dict[int, str]:
    response = await client.get(f"/products{query}")
    assert response.status_code == 200, response.text
    return {p["id"]: p["price"] for p in response.json()}


async def store_row(client: httpx.AsyncClient, month: str, store_id: int) -> dict[str, Any] | None:
    response = await client.get("/reports/top-stores", params={"month": month})
    assert response.status_code == 200, response.text
    return next((row for row in response.json() if row["id"] == store_id), None)


# --- the price charged ---------------------------------------------------------------------------


async def test_unit_price_is_what_was_charged(client: httpx.AsyncClient) -> None:
    sale = await sell(client, {"product_id": 2, "store_id": 1, "quantity": 3, "unit_price": "2.49"})
    assert (sale["unit_price"], sale["amount"], sale["catalog_price"]) == ("2.49", "7.47", "45.50")
    # One decimal, no decimals, leading zeros: the same exact amount.
    assert (await sell(client, {"product_id": 2, "store_id": 1, "unit_price": "2.5"}))["unit_price"] == "2.50"
    assert (await sell(client, {"product_id": 2, "store_id": 1, "unit_price": "7", "quantity": 2}))["amount"] == "14.00"
    assert (await sell(client, {"product_id": 2, "store_id": 1, "unit_price": "00000003.10"}))["unit_price"] == "3.10"
    free = await sell(client, {"product_id": 3, "store_id": 1, "quantity": 4, "unit_price": "0.00"})
    assert (free["unit_price"], free["amount"], free["catalog_price"]) == ("0.00", "0.00", "1234.56")
    most = await sell(client, {"product_id": 1, "store_id": 1, "quantity": 10_000, "unit_price": "99999999.99"})
    assert (most["unit_price"], most["amount"]) == ("99999999.99", "999999999900.00")
    # Without unit_price: the catalog's.
    plain = await sell(client, {"product_id": 2, "store_id": 1, "quantity": 2})
    assert (plain["unit_price"], plain["amount"], plain["catalog_price"]) == ("45.50", "91.00", "45.50")
    # The answer is what is stored: GET /sales/{id} says the same.
    stored = (await client.get(f"/sales/{most['id']}")).json()
    assert {k: stored[k] for k in most} == most


BAD_PRICES = ["-1", "1.234", "1e3", 2.5, 2, "100000000.00", "2.50\n", "", " 2.49", "2.", ".50", "1,50", "NaN", "٣.00"]


async def test_a_bad_unit_price_is_422(client: httpx.AsyncClient, settings: config.Settings) -> None:
    good = {"product_id": 2, "store_id": 1}
    for price in BAD_PRICES:
        problem = assert_problem(await post(client, {**good, "unit_price": price}), 422)
        assert [(e.get("index"), e["field"]) for e in problem["errors"]] == [(None, "unit_price")], price
        problem = assert_problem(await post(client, [good, {**good, "unit_price": price}]), 422)
        assert [(e.get("index"), e["field"]) for e in problem["errors"]] == [(1, "unit_price")], price
    assert await count_sales(settings) == 0


async def test_a_sale_is_priced_as_of_when_it_was_made(
    client: httpx.AsyncClient, clock: Clock, database_url: str, tmp_path: Path
) -> None:
    # Stored before the change, dated after its instant: its price stays as charged.
    earlier = await sell(client, {"product_id": 2, "store_id": 1, "sold_at": "2026-11-15T10:00:00Z"})
    assert earlier["unit_price"] == "45.50"
    keyed = await sell(client, {"product_id": 2, "store_id": 2, "idempotency_key": "before"})
    # Bread costs 50.00 from 10 November (a back-dated change: the clock shows the 20th). A file alone.
    out = import_products(database_url, tmp_path, BREAD_AT_50, "--effective", "2026-11-10T00:00:00Z")
    assert "1 price changes" in out
    await history_has(client, 2, 2)
    for sold_at, price in [
        ("2026-11-09T23:59:59Z", "45.50"),
        ("2026-11-10T02:59:59+03:00", "45.50"),  # the instant counts, not the offset
        ("2026-11-10T00:00:00Z", "50.00"),
        ("2026-11-10T03:00:00+03:00", "50.00"),
        ("2025-01-01T00:00:00Z", "45.50"),
    ]:
        sale = await sell(client, {"product_id": 2, "store_id": 1, "quantity": 2, "sold_at": sold_at})
        assert (sale["unit_price"], sale["catalog_price"]) == (price, price), sold_at
        assert sale["amount"] == f"{2 * float(price):.2f}"
    # A retry of a sale stored before the change is a replay, at the price it was charged.
    retry = await post(client, {"product_id": 2, "store_id": 2, "idempotency_key": "before"})
    assert (retry.status_code, retry.json()) == (200, keyed)
    # Without sold_at: the price in force at the clock's now.
    assert (await sell(client, {"product_id": 2, "store_id": 1}))["unit_price"] == "50.00"
    clock.set("2026-11-09T23:00:00Z")
    assert (await sell(client, {"product_id": 2, "store_id": 1}))["unit_price"] == "45.50"
    # The sale stored before the change is as it was, and so are the reports of what was sold.
    again = (await client.get(f"/sales/{earlier['id']}")).json()
    assert (again["unit_price"], again["amount"], again["catalog_price"]) == ("45.50", "45.50", "45.50")
    # A price charged against the new catalog price: the discount is measured from the price in force then.
    clock.set("2026-11-20T12:00:00Z")
    cut = await sell(client, {"product_id": 2, "store_id": 4, "unit_price": "48.00", "sold_at": "2026-11-11T10:00:00Z"})
    assert cut["catalog_price"] == "50.00"
    assert (await store_row(client, "2026-11", 4)) == {
        "id": 4,
        "address": "Alexanderplatz 1, Berlin",
        "revenue": "48.00",
        "gross": "48.00",
        "refunds": "0.00",
        "discounts": "2.00",
    }


async def test_a_future_price_takes_effect_when_the_clock_passes_it(
    client: httpx.AsyncClient, clock: Clock, database_url: str, tmp_path: Path
) -> None:
    import_products(
        database_url, tmp_path, "id,name,price\n2,Bread,60.00\n", "--effective", "2026-11-25T00:00:00+00:00"
    )
    await history_has(client, 2, 2)
    # Rendered now, before the change: the list must not keep this price once the change is in force.
    assert (await current_prices(client))[2] == "45.50"
    assert (await current_prices(client, "?include_retired=true"))[2] == "45.50"
    assert (await client.get("/products/2")).json()["price"] == "45.50"
    assert (await sell(client, {"product_id": 2, "store_id": 1}))["unit_price"] == "45.50"
    clock.set("2026-11-24T23:59:59Z")
    assert (await current_prices(client))[2] == "45.50"
    # Five minutes ahead is allowed: priced at its own instant.
    ahead = await sell(client, {"product_id": 2, "store_id": 1, "sold_at": "2026-11-25T00:04:00Z"})
    assert ahead["unit_price"] == "60.00"
    clock.set("2026-11-25T00:00:00Z")
    assert (await current_prices(client))[2] == "60.00"
    assert (await current_prices(client, "?include_retired=true"))[2] == "60.00"
    assert (await client.get("/products/2")).json()["price"] == "60.00"
    assert (await current_prices(client))[1] == "0.10"  # the others as they were
    assert (await sell(client, {"product_id": 2, "store_id": 1}))["unit_price"] == "60.00"
    late = await sell(client, {"product_id": 2, "store_id": 1, "sold_at": "2026-11-24T23:59:59Z"})
    assert late["unit_price"] == "45.50"
    # And back before the change (a clock set back): the price in force then.
    clock.set("2026-11-22T00:00:00Z")
    assert (await current_prices(client))[2] == "45.50"


async def test_product_detail_lists_its_price_history(
    client: httpx.AsyncClient, database_url: str, tmp_path: Path
) -> None:
    assert (await client.get("/products/2")).json() == {
        "id": 2,
        "name": "Bread",
        "price": "45.50",
        "prices": [{"effective_from": None, "price": "45.50"}],
    }
    import_products(database_url, tmp_path, BREAD_AT_50, "--effective", "2026-11-10T03:00:00+03:00")
    await history_has(client, 2, 2)
    assert (await client.get("/products/2")).json() == {
        "id": 2,
        "name": "Bread",
        "price": "50.00",
        "prices": [
            {"effective_from": None, "price": "45.50"},
            {"effective_from": "2026-11-10T00:00:00Z", "price": "50.00"},
        ],
    }
    # A change back-dated before the last one goes in between, in the order the prices take effect.
    import_products(database_url, tmp_path, "id,name,price\n2,Bread,48.00\n", "--effective", "2026-11-05T00:00:00Z")
    await history_has(client, 2, 3)
    assert (await client.get("/products/2")).json()["prices"] == [
        {"effective_from": None, "price": "45.50"},
        {"effective_from": "2026-11-05T00:00:00Z", "price": "48.00"},
        {"effective_from": "2026-11-10T00:00:00Z", "price": "50.00"},
    ]
    assert (await current_prices(client))[2] == "50.00"
    assert (await sell(client, {"product_id": 2, "store_id": 1, "sold_at": "2026-11-07T00:00:00Z"}))[
        "unit_price"
    ] == "48.00"
    big = (await client.get("/products/9000000000000000000")).json()
    assert big["id"] == 9_000_000_000_000_000_000 and big["price"] == "0.01"


async def test_a_back_dated_change_counts_only_the_sales_it_would_have_priced(
    client: httpx.AsyncClient, database_url: str, tmp_path: Path
) -> None:
    import_products(database_url, tmp_path, BREAD_AT_50, "--effective", "2026-11-10T00:00:00Z")
    await history_has(client, 2, 2)
    for day in ("2026-11-06", "2026-11-08", "2026-11-11", "2026-11-12"):
        await sell(client, {"product_id": 2, "store_id": 1, "sold_at": f"{day}T12:00:00Z"})
    # Back-dated to the 5th: the sales of the 6th and 8th were recorded at the old price; those of the 11th
    # and 12th fall under the change of the 10th, which this one does not touch.
    done = cli(
        database_url,
        "import",
        "--products",
        write(tmp_path / "p.csv", "id,name,price\n2,Bread,48.00\n"),
        "--effective",
        "2026-11-05T00:00:00Z",
    )
    assert done.returncode == 0, done.stderr
    assert "note: 2 sales of these products dated from 2026-11-05T00:00:00+00:00 on" in done.stderr


async def test_an_unknown_product_is_404(client: httpx.AsyncClient) -> None:
    for raw in ["5", "0", "abc", "-1", "1.0", "+2", "9223372036854775808", "%C2%B2", "1e3", "9" * 30]:
        assert_problem(await client.get(f"/products/{raw}"), 404)


# --- replays --------------------------------------------------------------------------------------


async def test_a_replay_must_charge_the_same_price(client: httpx.AsyncClient, settings: config.Settings) -> None:
    sale = {"product_id": 2, "store_id": 1, "unit_price": "40.00", "idempotency_key": "till-1"}
    first = await sell(client, sale)
    for retry in ({**sale}, {**sale, "unit_price": "40"}, {**sale, "unit_price": "40.0"}, {**sale, "unit_price": None}):
        if retry["unit_price"] is None:
            del retry["unit_price"]
        again = await post(client, retry)
        assert again.status_code == 200, (retry, again.text)
        assert again.json() == first
    for price in ("40.01", "45.50", "0.00"):
        problem = assert_problem(await post(client, {**sale, "unit_price": price}), 422)
        assert [e["field"] for e in problem["errors"]] == ["idempotency_key"]
    # A sale first priced from the catalog: a retry giving that price is a replay, another price is not.
    plain = await sell(client, {"product_id": 2, "store_id": 1, "idempotency_key": "till-2"})
    assert (
        await post(client, {"product_id": 2, "store_id": 1, "idempotency_key": "till-2", "unit_price": "45.5"})
    ).json() == plain
    conflict = {"product_id": 2, "store_id": 1, "idempotency_key": "till-2", "unit_price": "45.00"}
    assert_problem(await post(client, conflict), 422)
    # Twice in one array with two prices: the second names the key.
    twice = [{**sale, "idempotency_key": "till-3"}, {**sale, "idempotency_key": "till-3", "unit_price": "41.00"}]
    problem = assert_problem(await post(client, twice), 422)
    assert [(e.get("index"), e["field"]) for e in problem["errors"]] == [(1, "idempotency_key")]
    # Two requests at once, one key, two prices: one is stored, the other is told the key is taken.
    racing = [{**sale, "idempotency_key": "till-4", "unit_price": price} for price in ("1.00", "2.00")]
    answers = await asyncio.gather(*(post(client, body) for body in racing))
    assert sorted(a.status_code for a in answers) == [201, 422], [a.text for a in answers]
    assert await count_sales(settings) == 3


# --- import ---------------------------------------------------------------------------------------


async def price_rows(settings: config.Settings) -> int:
    return int(await scalar(settings, sa.select(sa.func.count()).select_from(db.prices)))


async def test_reimporting_the_same_prices_adds_no_history(
    client: httpx.AsyncClient, settings: config.Settings, database_url: str, tmp_path: Path
) -> None:
    rows = await price_rows(settings)
    assert "1 price changes" in import_products(
        database_url, tmp_path, BREAD_AT_50, "--effective", "2026-11-10T00:00:00Z"
    )
    assert await price_rows(settings) == rows + 1
    # The same price again, later: nothing new.
    assert "0 price changes" in import_products(
        database_url, tmp_path, BREAD_AT_50, "--effective", "2026-11-12T00:00:00Z"
    )
    # Every product as it is (a full catalog export), at the very instant of the last change: nothing new either.
    full = "id,name,price\n1,Milk,0.10\n2,Bread,50.00\n3,Coffee,1234.56\n"
    assert "0 price changes" in import_products(database_url, tmp_path, full, "--effective", "2026-11-10T00:00:00Z")
    assert await price_rows(settings) == rows + 1
    await history_has(client, 2, 2)
    assert len(await history(client, 1)) == 1


async def test_a_second_price_at_the_same_instant_is_refused(
    client: httpx.AsyncClient, settings: config.Settings, database_url: str, tmp_path: Path
) -> None:
    import_products(database_url, tmp_path, BREAD_AT_50, "--effective", "2026-11-10T00:00:00Z")
    rows = await price_rows(settings)
    # The same instant, another price: refused whole (the name change and the new product too).
    text = "id,name,price\n2,Rye bread,55.00\n5,Tea,1.00\n"
    # The instant of the change, written with another offset.
    done = cli(
        database_url, "import", "--products", write(tmp_path / "c.csv", text), "--effective", "2026-11-10T01:00+01:00"
    )
    assert done.returncode == 1, done.stdout
    assert "nothing was imported" in done.stderr
    assert "product 2" in done.stderr
    assert await price_rows(settings) == rows
    names = await scalar(settings, sa.select(db.products.c.name).where(db.products.c.id == 2))
    assert names == "Bread"
    assert await scalar(settings, sa.select(sa.func.count()).select_from(db.products).where(db.products.c.id == 5)) == 0
    await history_has(client, 2, 2)
    assert (await client.get("/products/2")).json()["price"] == "50.00"
    assert_problem(await client.get("/products/5"), 404)


async def test_effective_needs_an_instant_with_an_offset(
    client: httpx.AsyncClient, settings: config.Settings, database_url: str, tmp_path: Path
) -> None:
    rows = await price_rows(settings)
    products = write(tmp_path / "p.csv", BREAD_AT_50)
    # No offset; not an instant.
    for effective in ("2026-11-10T00:00:00", "next tuesday"):
        done = cli(database_url, "import", "--products", products, "--effective", effective)
        assert done.returncode == 2, (effective, done.stdout, done.stderr)
        assert "--effective" in done.stderr
    assert await price_rows(settings) == rows
    assert (await client.get("/products/2")).json()["prices"] == [{"effective_from": None, "price": "45.50"}]


# --- discounts ------------------------------------------------------------------------------------


async def test_discounts_are_what_the_catalog_price_was_cut_by(client: httpx.AsyncClient) -> None:
    nov, oct_ = "2026-11-05T12:00:00Z", "2026-10-05T12:00:00Z"
    await sell(
        client,
        [
            {"product_id": 2, "store_id": 1, "quantity": 2, "unit_price": "40.50", "sold_at": nov},  # 5.00 off, twice
            {
                "product_id": 1,
                "store_id": 1,
                "quantity": 3,
                "unit_price": "0.20",
                "sold_at": nov,
            },  # 0.10 above, 3 times
            {"product_id": 3, "store_id": 1, "sold_at": nov},  # at the catalog price
            {"product_id": 2, "store_id": 1, "quantity": 7, "unit_price": "1.00", "sold_at": oct_},  # another month
            {"product_id": 2, "store_id": 2, "unit_price": "0.00", "sold_at": nov},  # given away
            {"product_id": 3, "store_id": 3, "unit_price": "2000.00", "sold_at": nov},  # far above
        ],
    )
    response = await client.get("/reports/top-stores", params={"month": "2026-11"})
    assert response.status_code == 200, response.text
    assert response.json() == [
        {"id": 3, "address": "350 5th Ave, New York", "revenue": "2000.00", "gross": "2000.00", "refunds": "0.00",
         "discounts": "-765.44"},
        {"id": 1, "address": "1 Red Square, Moscow", "revenue": "1316.16", "gross": "1316.16", "refunds": "0.00",
         "discounts": "9.70"},
        {"id": 2, "address": "5 Svetlanskaya, Vladivostok", "revenue": "0.00", "gross": "0.00", "refunds": "0.00",
         "discounts": "45.50"},
    ]  # fmt: skip
    assert await store_row(client, "2026-10", 1) == {
        "id": 1,
        "address": "1 Red Square, Moscow",
        "revenue": "7.00",
        "gross": "7.00",
        "refunds": "0.00",
        "discounts": "311.50",
    }
    # Product revenue is what was charged.
    products = (await client.get("/reports/top-products", params={"month": "2026-11"})).json()
    assert {p["id"]: p["revenue"] for p in products} == {1: "0.60", 2: "81.00", 3: "3234.56"}


# --- retired products and stores ------------------------------------------------------------------


def retire(database_url: str, *args: str) -> None:
    done = cli(database_url, "retire", *args)
    assert done.returncode == 0, done.stderr


async def listed(client: httpx.AsyncClient, path: str, query: str = "") -> dict[int, dict[str, Any]]:
    response = await client.get(path + query)
    assert response.status_code == 200, response.text
    return {row["id"]: row for row in response.json()}


async def test_a_retired_product_is_not_sold_but_stays_in_the_reports(
    client: httpx.AsyncClient, settings: config.Settings, database_url: str
) -> None:
    await sell(client, {"product_id": 2, "store_id": 1, "quantity": 2, "sold_at": "2026-11-05T12:00:00Z"})
    retire(database_url, "--product", "2")

    async def gone() -> bool:
        return 2 not in await listed(client, "/products")

    await eventually(gone, what="product 2 leaves the list")
    assert set(await listed(client, "/products")) == {1, 3, 9_000_000_000_000_000_000}
    with_retired = await listed(client, "/products", "?include_retired=true")
    assert with_retired[2] == {"id": 2, "name": "Bread", "price": "45.50", "retired": True}
    assert "retired" not in with_retired[1]
    assert set(await listed(client, "/products", "?include_retired=false")) == {1, 3, 9_000_000_000_000_000_000}
    assert (await client.get("/products/2")).json()["retired"] is True
    assert "retired" not in (await client.get("/products/1")).json()
    problem = assert_problem(await post(client, {"product_id": 2, "store_id": 1}), 422)
    assert [e["field"] for e in problem["errors"]] == ["product_id"]
    assert "retired" in problem["errors"][0]["message"]
    problem = assert_problem(
        await post(client, [{"product_id": 1, "store_id": 1}, {"product_id": 2, "store_id": 1}]), 422
    )
    assert [(e.get("index"), e["field"]) for e in problem["errors"]] == [(1, "product_id")]
    assert await count_sales(settings) == 1
    # Its history stays in every report.
    assert (await store_row(client, "2026-11", 1) or {}).get("revenue") == "91.00"
    top = (await client.get("/reports/top-products")).json()
    assert top == [{"id": 2, "name": "Bread", "quantity": 2, "sold": 2, "returned": 0, "revenue": "91.00"}]
    # Brought back: sold again, listed without the flag.
    retire(database_url, "--product", "2", "--undo")

    async def back() -> bool:
        return 2 in await listed(client, "/products")

    await eventually(back, what="product 2 is back")
    assert (await listed(client, "/products"))[2] == {"id": 2, "name": "Bread", "price": "45.50"}
    await sell(client, {"product_id": 2, "store_id": 1})


async def test_a_retired_store_is_not_sold_at_but_stays_in_the_reports(
    client: httpx.AsyncClient, settings: config.Settings, database_url: str
) -> None:
    await sell(client, {"product_id": 3, "store_id": 3, "sold_at": "2026-11-05T12:00:00Z"})
    retire(database_url, "--store", "3")

    async def gone() -> bool:
        return 3 not in await listed(client, "/stores")

    await eventually(gone, what="store 3 leaves the list")
    assert set(await listed(client, "/stores")) == {1, 2, 4}
    assert (await listed(client, "/stores", "?include_retired=true"))[3] == {
        "id": 3,
        "address": "350 5th Ave, New York",
        "timezone": "America/New_York",
        "retired": True,
    }
    problem = assert_problem(await post(client, {"product_id": 1, "store_id": 3}), 422)
    assert [e["field"] for e in problem["errors"]] == ["store_id"]
    assert "retired" in problem["errors"][0]["message"]
    assert await count_sales(settings) == 1
    assert (await store_row(client, "2026-11", 3) or {}).get("revenue") == "1234.56"
    retire(database_url, "--store", "3", "--undo")

    async def back() -> bool:
        return 3 in await listed(client, "/stores")

    await eventually(back, what="store 3 is back")
    assert "retired" not in (await listed(client, "/stores"))[3]
    await sell(client, {"product_id": 1, "store_id": 3})


async def test_include_retired_is_true_or_false(client: httpx.AsyncClient) -> None:
    for path in ("/products", "/stores"):
        for value in ("maybe", "True", "1", "", "yes"):
            problem = assert_problem(await client.get(path, params={"include_retired": value}), 422)
            assert [e["field"] for e in problem["errors"]] == ["include_retired"]


async def retired_flags(settings: config.Settings, table: sa.Table) -> dict[int, bool]:
    database = db.connect(settings)
    try:
        async with database.reader.connect() as conn:
            return {row.id: bool(row.retired) for row in await conn.execute(sa.select(table.c.id, table.c.retired))}
    finally:
        await database.dispose()


async def test_retiring_an_unknown_id_changes_nothing(
    client: httpx.AsyncClient, settings: config.Settings, database_url: str
) -> None:
    for args in (["--product", "2", "--product", "404"], ["--store", "3", "--store", "404", "--undo"]):
        done = cli(database_url, "retire", *args)
        assert done.returncode == 1, (args, done.stdout)
        assert "404" in done.stderr and "nothing was changed" in done.stderr
    assert not any((await retired_flags(settings, db.products)).values())
    assert not any((await retired_flags(settings, db.stores)).values())
    assert 2 in await listed(client, "/products")
    await sell(client, {"product_id": 2, "store_id": 3})


async def test_retire_with_products_and_stores_does_both_or_neither(
    client: httpx.AsyncClient, settings: config.Settings, database_url: str
) -> None:
    """``retire --product 2 --store 3`` must not retire the product and silently ignore the store."""
    done = cli(database_url, "retire", "--product", "2", "--store", "3")
    products, stores = await retired_flags(settings, db.products), await retired_flags(settings, db.stores)
    if done.returncode == 0:
        assert products[2] and stores[3], (done.stdout, products, stores)
    else:
        assert not products[2] and not stores[3], (done.stdout, done.stderr)


async def test_an_import_may_carry_a_retired_column(
    client: httpx.AsyncClient, settings: config.Settings, database_url: str, tmp_path: Path
) -> None:
    products = write(
        tmp_path / "p.csv", "id,name,price,retired\n1,Milk,0.10,true\n2,Bread,45.50,false\n6,Old,1.00,yes\n"
    )
    stores = write(tmp_path / "s.csv", "id,address,timezone,retired\n4,Alexanderplatz 1,Europe/Berlin,TRUE\n")
    done = cli(database_url, "import", "--products", products, "--stores", stores, "--effective", "2026-11-01T00:00Z")
    assert done.returncode == 0, done.stderr
    assert await retired_flags(settings, db.products) == {1: True, 2: False, 3: False, 6: True, 9 * 10**18: False}
    assert (await retired_flags(settings, db.stores))[4] is True

    async def gone() -> bool:
        return 1 not in await listed(client, "/products")

    await eventually(gone, what="product 1 leaves the list")
    assert (await listed(client, "/products", "?include_retired=true"))[6] == {
        "id": 6,
        "name": "Old",
        "price": "1.00",
        "retired": True,
    }
    assert 4 not in await listed(client, "/stores")
    assert (await listed(client, "/stores", "?include_retired=true"))[4]["address"] == "Alexanderplatz 1"
    assert_problem(await post(client, {"product_id": 1, "store_id": 1}), 422)
    assert_problem(await post(client, {"product_id": 2, "store_id": 4}), 422)
    # A file without the column leaves the flags as they are; with it, false brings back.
    products = write(tmp_path / "p.csv", "id,name,price\n1,Milk,0.10\n6,Old,1.00\n")
    stores = write(tmp_path / "s.csv", "id,address,timezone,retired\n4,Alexanderplatz 1,Europe/Berlin,false\n")
    done = cli(database_url, "import", "--products", products, "--stores", stores, "--effective", "2026-11-02T00:00Z")
    assert done.returncode == 0, done.stderr
    assert await retired_flags(settings, db.products) == {1: True, 2: False, 3: False, 6: True, 9 * 10**18: False}
    assert (await retired_flags(settings, db.stores))[4] is False

    async def store_back() -> bool:
        return 4 in await listed(client, "/stores")

    await eventually(store_back, what="store 4 is back")
    assert 1 not in await listed(client, "/products")
    await sell(client, {"product_id": 2, "store_id": 4})


# --- the reports' limit ---------------------------------------------------------------------------


async def test_a_bad_limit_is_422(client: httpx.AsyncClient) -> None:
    for path in ("/reports/top-stores", "/reports/top-products"):
        for limit in ("0", "101", "-1", "x", "", "3.0", "1e1", "٣", " 3"):
            problem = assert_problem(await client.get(path, params={"month": "2026-11", "limit": limit}), 422)
            assert [e["field"] for e in problem["errors"]] == ["limit"], (path, limit)


async def test_limit_cuts_the_reports(client: httpx.AsyncClient, settings: config.Settings) -> None:
    products = [{"id": 2, "quantity": 1}, {"id": 3, "quantity": 2}, {"id": 1, "quantity": 3}]
    await sell(client, [{"product_id": 1, "store_id": s, "quantity": s} for s in (1, 2, 3, 4)])
    await sell(client, [{"product_id": p["id"], "store_id": 1, "quantity": p["quantity"]} for p in products])
    await sell(client, {"product_id": 9_000_000_000_000_000_000, "store_id": 1})
    for path, everything in (("/reports/top-stores", 4), ("/reports/top-products", 4)):
        default = (await client.get(path)).json()
        assert len(default) == everything
        assert (await client.get(path, params={"limit": "100"})).json() == default
        assert (await client.get(path, params={"limit": "3"})).json() == default[:3]
        assert (await client.get(path, params={"limit": "1"})).json() == default[:1]
    assert [r["id"] for r in (await client.get("/reports/top-products", params={"limit": "3"})).json()] == [1, 3, 2]
    # The default is ten.
    many = [{"id": i, "address": f"Store {i}", "timezone": "UTC"} for i in range(100, 112)]
    await seed(settings, [], many)
    await sell(client, [{"product_id": 1, "store_id": s["id"]} for s in many])
    assert len((await client.get("/reports/top-stores")).json()) == 10
    assert len((await client.get("/reports/top-stores", params={"limit": "100"})).json()) == 16


async def test_a_retry_of_a_sale_stored_before_its_product_retired_is_a_replay(
    client: httpx.AsyncClient, database_url: str
) -> None:
    sale = {"product_id": 2, "store_id": 2, "quantity": 1, "idempotency_key": "k-ret"}
    first = await client.post("/sales", json=sale)
    assert first.status_code == 201
    assert cli(database_url, "retire", "--product", "2", "--store", "2").returncode == 0
    again = await client.post("/sales", json=sale)
    assert again.status_code == 200, again.text
    assert again.json() == first.json()
    fresh = await client.post("/sales", json={**sale, "idempotency_key": "k-new"})
    assert_problem(fresh, 422)
