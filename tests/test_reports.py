"""The reports: store-local months, DST, leap years, ties, the top ten."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from salesreport import config, db
from salesreport.schemas import format_money
from tests.conftest import seed
from tests.test_api import assert_problem

pytestmark = pytest.mark.anyio
# Also through PgBouncer in transaction pooling mode (see conftest.database_url).
THROUGH_PGBOUNCER = True


async def sell(client: httpx.AsyncClient, sales: list[dict[str, object]]) -> None:
    response = await client.post("/sales", content=json.dumps(sales), headers={"content-type": "application/json"})
    assert response.status_code == 201, response.text


async def top_stores(client: httpx.AsyncClient, month: str) -> list[tuple[int, str]]:
    response = await client.get("/reports/top-stores", params={"month": month})
    assert response.status_code == 200, response.text
    return [(row["id"], row["revenue"]) for row in response.json()]


async def top_products(client: httpx.AsyncClient, month: str | None = None) -> list[tuple[int, int]]:
    response = await client.get("/reports/top-products", params={"month": month} if month else {})
    assert response.status_code == 200, response.text
    return [(row["id"], row["quantity"]) for row in response.json()]


async def test_month_follows_the_store_local_calendar(client: httpx.AsyncClient) -> None:
    await sell(
        client,
        [
            # Vladivostok is UTC+10: this is 06:30 on 1 November there.
            {"product_id": 2, "store_id": 2, "sold_at": "2026-10-31T20:30:00Z"},
            # New York is UTC-4 until 1 November 06:00Z: this is 22:00 on 31 October there.
            {"product_id": 2, "store_id": 3, "sold_at": "2026-11-01T02:00:00Z"},
            # Moscow is UTC+3: 23:59:59 on 31 October there.
            {"product_id": 1, "store_id": 1, "sold_at": "2026-10-31T20:59:59Z"},
            # ... and one second later it is November in Moscow.
            {"product_id": 1, "store_id": 1, "sold_at": "2026-10-31T21:00:00Z", "quantity": 2},
        ],
    )
    assert await top_stores(client, "2026-10") == [(3, "45.50"), (1, "0.10")]
    assert await top_stores(client, "2026-11") == [(2, "45.50"), (1, "0.20")]
    assert await top_products(client, "2026-10") == [(1, 1), (2, 1)]
    assert await top_products(client, "2026-11") == [(1, 2), (2, 1)]
    assert await top_products(client) == [(1, 3), (2, 2)]


async def test_dst_change_in_new_york(client: httpx.AsyncClient) -> None:
    # DST ended on 2025-11-02 at 06:00Z; the month then ends at 2025-12-01T05:00Z (UTC-5).
    await sell(
        client,
        [
            {"product_id": 1, "store_id": 3, "sold_at": "2025-11-02T05:30:00Z"},  # 01:30 EDT
            {"product_id": 1, "store_id": 3, "sold_at": "2025-11-02T06:30:00Z"},  # 01:30 EST, again
            {"product_id": 1, "store_id": 3, "sold_at": "2025-12-01T04:59:59Z"},  # 23:59:59 on 30 November
            {"product_id": 2, "store_id": 3, "sold_at": "2025-12-01T05:00:00Z"},  # midnight, 1 December
            {"product_id": 2, "store_id": 3, "sold_at": "2025-03-01T04:59:59Z"},  # 23:59:59 on 28 February
            {"product_id": 3, "store_id": 3, "sold_at": "2025-03-31T03:59:59Z"},  # 23:59:59 EDT on 31 March
        ],
    )
    assert await top_stores(client, "2025-11") == [(3, "0.30")]
    assert await top_stores(client, "2025-12") == [(3, "45.50")]
    assert await top_stores(client, "2025-02") == [(3, "45.50")]
    assert await top_stores(client, "2025-03") == [(3, "1234.56")]


async def test_leap_february(client: httpx.AsyncClient) -> None:
    # 2024: the last leap year before the app's clock (2026-11-20; future sales are refused).
    await sell(
        client,
        [
            {"product_id": 1, "store_id": 4, "sold_at": "2024-02-29T22:59:59Z"},
            {"product_id": 2, "store_id": 4, "sold_at": "2024-02-29T23:00:00Z"},
            {"product_id": 2, "store_id": 1, "sold_at": "2024-02-29T20:59:59Z"},
        ],
    )
    assert await top_stores(client, "2024-02") == [(1, "45.50"), (4, "0.10")]
    assert await top_stores(client, "2024-03") == [(4, "45.50")]


async def test_top_ten_ties_by_id_and_exact_sums(client: httpx.AsyncClient, settings: config.Settings) -> None:
    stores = [{"id": i, "address": f"Store {i}", "timezone": "UTC"} for i in range(100, 115)]
    await seed(settings, [], stores)
    sales = []
    for i in range(100, 115):
        # Stores 100..114 earn 1..15 dimes, except 112 and 113 which tie with 111.
        dimes = {112: 12, 113: 12}.get(i, i - 99)
        sales.append({"product_id": 1, "store_id": i, "quantity": dimes, "sold_at": "2025-06-15T12:00:00Z"})
    await sell(client, sales)
    top = await top_stores(client, "2025-06")
    assert len(top) == 10
    assert top[:4] == [(114, "1.50"), (111, "1.20"), (112, "1.20"), (113, "1.20")]
    assert top[-1] == (105, "0.60")
    response = await client.get("/reports/top-stores", params={"month": "2025-06"})
    assert response.json()[0] == {
        "id": 114,
        "address": "Store 114",
        "revenue": "1.50",
        "gross": "1.50",
        "refunds": "0.00",
        "discounts": "0.00",
    }


async def test_top_products_ties_and_limit(client: httpx.AsyncClient, settings: config.Settings) -> None:
    products = [{"id": i, "name": f"Item {i}", "price": 100} for i in range(10, 25)]
    await seed(settings, products, [])
    await sell(client, [{"product_id": i, "store_id": 1, "quantity": 5 if i < 20 else i} for i in range(10, 25)])
    top = await top_products(client)
    assert top[:5] == [(24, 24), (23, 23), (22, 22), (21, 21), (20, 20)]
    assert top[5:] == [(10, 5), (11, 5), (12, 5), (13, 5), (14, 5)]
    names = (await client.get("/reports/top-products")).json()
    assert names[0] == {"id": 24, "name": "Item 24", "quantity": 24, "sold": 24, "returned": 0, "revenue": "24.00"}


async def test_the_chains_month_may_pass_what_one_store_can_hold(
    client: httpx.AsyncClient, settings: config.Settings
) -> None:
    # Twenty stores, each with a month at its rollup's bound (a few thousand sales of 10,000 units at
    # the highest price): the chain's month is past what a BIGINT holds, though every store's fits.
    stores: list[dict[str, Any]] = [{"id": i, "address": f"Store {i}", "timezone": "UTC"} for i in range(100, 120)]
    await seed(settings, [], stores)
    rollups = db.Rollups()
    for store in stores:
        rollups.add_sale(store["id"], store["id"], 202606, 1, db.ROLLUP_LIMIT, db.ROLLUP_LIMIT, 1)
    database = db.connect(settings)
    try:
        async with database.writer.begin() as conn:
            await db.add_to_rollups(conn, 0, rollups)
            await db.bump_version(conn, db.DATA)
    finally:
        await database.dispose()
    whole = format_money(20 * db.ROLLUP_LIMIT)
    response = await client.get("/reports/revenue-by-month", params={"until": "2026-06", "months": "1"})
    assert response.status_code == 200, response.text
    assert response.json() == [
        {"month": "2026-06", "revenue": whole, "gross": whole, "refunds": "0.00", "discounts": whole, "sales": 20}
    ]
    one_store = await client.get(
        "/reports/revenue-by-month", params={"until": "2026-06", "months": "1", "store_id": 100}
    )
    assert one_store.json()[0]["revenue"] == format_money(db.ROLLUP_LIMIT)
    assert (await client.get("/", params={"month": "2026-06"})).status_code == 200


async def test_empty_month_is_an_empty_list(client: httpx.AsyncClient) -> None:
    assert await top_stores(client, "1999-01") == []
    assert await top_products(client, "1999-01") == []


@pytest.mark.parametrize(
    "month", ["2026-13", "2026-00", "2026-1", "26-11", "2026/11", "", "2026-11-01", "２０２６-11", "x" * 5000]
)
@pytest.mark.parametrize("path", ["/reports/top-stores", "/reports/top-products"])
async def test_bad_month_is_422(client: httpx.AsyncClient, path: str, month: str) -> None:
    problem = assert_problem(await client.get(path, params={"month": month}), 422)
    assert problem["errors"][0]["field"] == "month"


# More digits than int() reads (4300): refused as any other bad number, not a 500.
MANY_DIGITS = "1" * 5000


@pytest.mark.parametrize(
    ("path", "params", "field"),
    [
        ("/reports/top-stores", {"month": "2026-11", "limit": MANY_DIGITS}, "limit"),
        ("/reports/top-products", {"limit": MANY_DIGITS}, "limit"),
        ("/reports/top-products", {"month": "2026-11", "store_id": MANY_DIGITS}, "store_id"),
        ("/reports/revenue-by-month", {"until": "2026-11", "months": MANY_DIGITS}, "months"),
        ("/reports/revenue-by-month", {"until": "2026-11", "store_id": MANY_DIGITS}, "store_id"),
    ],
)
async def test_a_number_of_more_digits_than_int_reads_is_422(
    client: httpx.AsyncClient, path: str, params: dict[str, str], field: str
) -> None:
    problem = assert_problem(await client.get(path, params=params), 422)
    assert problem["errors"][0]["field"] == field


async def test_leading_zeros_of_any_number_still_name_the_number(client: httpx.AsyncClient) -> None:
    zeros = "0" * 5000
    params = {"until": "2026-11", "months": zeros + "2", "store_id": zeros + "1"}
    response = await client.get("/reports/revenue-by-month", params=params)
    assert response.status_code == 200, response.text
    assert [m["month"] for m in response.json()] == ["2026-10", "2026-11"]
    limited = await client.get("/reports/top-products", params={"limit": zeros + "1"})
    assert limited.status_code == 200, limited.text


@pytest.mark.parametrize("path", ["/sales/", "/products/", "/stores/"])
async def test_an_id_of_more_digits_than_int_reads_is_404(client: httpx.AsyncClient, path: str) -> None:
    response = await client.get(path + MANY_DIGITS)
    assert response.status_code == 404, response.text
