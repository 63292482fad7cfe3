"""The owners' dashboard over HTTP: the pages agree with the JSON API, CSV, sign-in, languages, headers."""

from __future__ import annotations

import asyncio
import csv
import io
import itertools
import re
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncConnection

from salesreport import config, db, reports
from salesreport.changes import Changes
from tests.conftest import Clock, app_client, eventually, http_scope, seed
from tests.test_api import assert_problem
from tests.test_auth import create, revoke
from tests.test_metrics import scrape

pytestmark = pytest.mark.anyio
# Also through PgBouncer in transaction pooling mode (see conftest.database_url).
THROUGH_PGBOUNCER = True

MONTH = "2026-06"
CYRILLIC: dict[str, Any] = {"id": 7, "address": "ул. Ленина, 1, Омск", "timezone": "Asia/Omsk"}


async def sell(client: httpx.AsyncClient, body: Any, key: str | None = None) -> None:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    response = await client.post("/sales", json=body, headers=headers)
    assert response.status_code == 201, response.text


async def some_sales(client: httpx.AsyncClient, settings: config.Settings) -> None:
    await seed(settings, [], [CYRILLIC])
    day = f"{MONTH}-10T10:00:00Z"
    await sell(
        client,
        [
            {"product_id": 2, "store_id": 1, "quantity": 3, "sold_at": day},
            {"product_id": 3, "store_id": 7, "quantity": 1, "sold_at": day, "unit_price": "1000.00"},
            {"product_id": 1, "store_id": 4, "quantity": 9, "sold_at": day},
            {"product_id": 2, "store_id": 2, "quantity": 1, "sold_at": "2026-05-10T10:00:00Z"},
        ],
    )


def rows(html: str, table: str) -> list[tuple[str, list[str]]]:
    """(data-id, data-values) of each row of the table with this id."""
    body = html.split(f'<table id="{table}"', 1)[1].split("</table>", 1)[0]
    found = []
    for row in re.findall(r"<tr data-id=\"(\d+)\">(.*?)</tr>", body, re.S):
        found.append((row[0], re.findall(r'data-value="([^"]+)"', row[1])))
    return found


async def test_the_month_page_shows_what_the_api_says(client: httpx.AsyncClient, settings: config.Settings) -> None:
    await some_sales(client, settings)
    page = await client.get("/", params={"month": MONTH})
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    html = page.text
    stores = (await client.get("/reports/top-stores", params={"month": MONTH})).json()
    assert rows(html, "top-stores") == [(str(s["id"]), [s["revenue"]]) for s in stores]
    products = (await client.get("/reports/top-products", params={"month": MONTH})).json()
    assert rows(html, "top-products") == [(str(p["id"]), [str(p["quantity"]), p["revenue"]]) for p in products]
    assert '<caption id="top-stores-caption">Top stores</caption>' in html
    assert '<caption id="top-products-caption">Top products</caption>' in html
    assert '<label for="month">Month</label>' in html and 'type="month"' in html
    assert CYRILLIC["address"] in html
    assert f'href="/stores/{CYRILLIC["id"]}?month={MONTH}"' in html
    # The rank of last month beside each store: store 2 sold in May only, so this month it is absent.
    assert 'data-id="2"' not in html.split('<table id="top-stores"', 1)[1].split("</table>", 1)[0]


async def test_revenue_by_month_has_twelve_months_and_matches_the_stores(
    client: httpx.AsyncClient, settings: config.Settings
) -> None:
    await some_sales(client, settings)
    series = (await client.get("/reports/revenue-by-month", params={"until": MONTH})).json()
    assert [m["month"] for m in series] == [f"2025-{m:02d}" for m in range(7, 13)] + [
        f"2026-{m:02d}" for m in range(1, 7)
    ]
    stores = (await client.get("/reports/top-stores", params={"month": MONTH, "limit": 100})).json()
    total = sum(int(s["revenue"].replace(".", "")) for s in stores)
    assert int(series[-1]["revenue"].replace(".", "")) == total
    assert series[-2]["revenue"] == "45.50"  # May: one loaf
    for bad in ("0", "37", "x"):
        assert (await client.get("/reports/revenue-by-month", params={"months": bad})).status_code == 422


async def test_csv_has_the_same_fields_and_figures(client: httpx.AsyncClient, settings: config.Settings) -> None:
    await some_sales(client, settings)
    as_json = (await client.get("/reports/top-stores", params={"month": MONTH})).json()
    for response in (
        await client.get("/reports/top-stores", params={"month": MONTH}, headers={"accept": "text/csv"}),
        await client.get("/reports/top-stores", params={"month": MONTH, "format": "csv"}),
    ):
        assert response.status_code == 200
        assert response.headers["content-type"] == "text/csv; charset=utf-8"
        assert response.headers["content-disposition"] == f'attachment; filename="top-stores-{MONTH}.csv"'
        assert response.content.startswith(b"\xef\xbb\xbf")  # Excel reads UTF-8 (Cyrillic) only with a BOM
        table = list(csv.DictReader(io.StringIO(response.content.decode("utf-8-sig"))))
        assert table == [{k: str(v) for k, v in row.items()} for row in as_json]
    assert CYRILLIC["address"] in response.content.decode("utf-8-sig")
    products = await client.get("/reports/top-products", params={"format": "csv"})
    assert products.headers["content-disposition"] == 'attachment; filename="top-products-all-time.csv"'
    assert products.text.lstrip("\ufeff").splitlines()[0] == "id,name,quantity,sold,returned,revenue"
    assert (await client.get("/reports/top-stores", params={"format": "xml"})).status_code == 422


async def test_the_store_page(client: httpx.AsyncClient, settings: config.Settings) -> None:
    await some_sales(client, settings)
    page = await client.get(f"/stores/{CYRILLIC['id']}", params={"month": MONTH})
    assert page.status_code == 200
    assert "Asia/Omsk" in page.text and CYRILLIC["address"] in page.text
    products = (await client.get("/reports/top-products", params={"month": MONTH, "store_id": 7})).json()
    assert rows(page.text, "top-products") == [(str(p["id"]), [str(p["quantity"]), p["revenue"]]) for p in products]
    assert products == [{"id": 3, "name": "Coffee", "quantity": 1, "sold": 1, "returned": 0, "revenue": "1000.00"}]
    for missing in ("999", "x", "0", "99999999999999999999"):
        assert (await client.get(f"/stores/{missing}")).status_code == 404


async def test_russian_and_english(client: httpx.AsyncClient, settings: config.Settings) -> None:
    await some_sales(client, settings)
    russian = await client.get("/", params={"month": MONTH}, headers={"accept-language": "ru-RU,ru;q=0.9,en;q=0.5"})
    assert '<html lang="ru">' in russian.text
    assert "Июнь 2026" in russian.text
    assert "1\xa0000,00\xa0₽" in russian.text  # store 7's coffee
    english = await client.get("/", params={"month": MONTH, "lang": "en"}, headers={"accept-language": "ru"})
    assert '<html lang="en">' in english.text and "June 2026" in english.text
    assert "RUB\xa01,000.00" in english.text
    assert english.cookies.get("sr_lang") == "en"  # the switch is remembered
    client.cookies.clear()
    for header, lang in (
        ("en-US;q=0.5, ru;q=0.9", "ru"),
        ("ru;q=0, en", "en"),
        ("de, ru;q=0.1", "ru"),
        ("x" * 300, "en"),
        # A browser set to many languages (Firefox's weights): over 200 characters, read whole.
        (
            "ru-RU,ru;q=0.94,uk;q=0.89,be;q=0.83,kk;q=0.78,de-DE;q=0.72,de;q=0.67,fr-FR;q=0.61,fr;q=0.56,it;q=0.5,"
            "es;q=0.44,pt;q=0.39,pl;q=0.33,cs;q=0.28,nl;q=0.22,sv;q=0.17,fi;q=0.11,ja;q=0.09,en-US;q=0.06,en;q=0.01",
            "ru",
        ),
        ("ru, " + "x" * 1000, "en"),  # too long to read: as if not sent
    ):
        page = await client.get("/", params={"month": MONTH}, headers={"accept-language": header})
        assert f'<html lang="{lang}">' in page.text, header


async def test_security_headers_and_no_inline_script(client: httpx.AsyncClient) -> None:
    page = await client.get("/")
    policy = page.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "unsafe-inline" not in policy and "frame-ancestors 'none'" in policy
    assert page.headers["x-content-type-options"] == "nosniff"
    assert page.headers["cache-control"] == "no-store"
    scripts = re.findall(r"<script([^>]*)>", page.text)
    assert scripts and all("src=" in attributes for attributes in scripts)
    assert "style=" not in page.text and "<style" not in page.text
    for url in re.findall(r'(?:src|href)="(/static/[^"]+)"', page.text):
        asset = await client.get(url)
        assert asset.status_code == 200
        assert asset.headers["cache-control"] == "public, max-age=31536000, immutable"
    assert (await client.get("/static/app.js")).status_code == 404  # only under its hashed name


async def test_sign_in_and_out(client: httpx.AsyncClient, settings: config.Settings) -> None:
    owner_id, owner = await create(settings, "owner")
    _, pos = await create(settings, "pos", 1)
    shown = await client.get("/", params={"month": MONTH})
    assert shown.status_code == 401
    assert 'type="password"' in shown.text and '<label for="key">API key</label>' in shown.text
    assert (await client.get("/reports/top-stores")).status_code == 401

    refused = await client.post("/signin", data={"key": pos, "next": "/"})
    assert refused.status_code == 403 and "pos key" in refused.text
    assert "sr_session" not in refused.cookies
    wrong = await client.post("/signin", data={"key": "sr_nope"})
    assert wrong.status_code == 401 and "Unknown or revoked key" in wrong.text

    signed = await client.post("/signin", data={"key": owner, "next": f"/?month={MONTH}"})
    assert signed.status_code == 303 and signed.headers["location"] == f"/?month={MONTH}"
    cookie = signed.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Max-Age=43200" in cookie
    assert owner not in cookie
    assert (await client.get("/", params={"month": MONTH})).status_code == 200
    assert (await client.get("/reports/top-stores", params={"format": "csv"})).status_code == 200  # the CSV links
    # It reads what an owner key reads, and no shared cache keeps any of it.
    sale = await client.post(
        "/sales", json={"product_id": 1, "store_id": 1}, headers={"authorization": f"Bearer {owner}"}
    )
    for path in (
        "/products",
        "/products/1",
        "/stores",
        f"/sales/{sale.json()['id']}",
        "/reports/top-products",
        "/metrics",
    ):
        read = await client.get(path)
        assert read.status_code == 200, (path, read.text)
        assert read.headers["cache-control"] == "private, no-store", path
    # A session reads; it does not write.
    assert (await client.post("/sales", json={"product_id": 1, "store_id": 1})).status_code == 401

    copied = client.cookies["sr_session"]
    out = await client.post("/signout")
    assert out.status_code == 303
    assert (await client.get("/", params={"month": MONTH})).status_code == 401
    client.cookies.set("sr_session", copied)  # a copy of the cookie dies with the session
    assert (await client.get("/", params={"month": MONTH})).status_code == 401
    client.cookies.clear()

    await client.post("/signin", data={"key": owner})
    assert (await client.get("/")).status_code == 200
    await revoke(settings, owner_id)

    async def signed_out() -> bool:
        return (await client.get("/")).status_code == 401

    # A revoked key ends its sessions at once: on PostgreSQL within ``changes.BOUND``, at the worker's next
    # read of the change counters.
    await eventually(signed_out, what="the revoked key's session has ended")
    assert (await client.post("/signin", data={"key": owner})).status_code == 401


async def test_a_forged_or_cross_site_sign_in_is_refused(client: httpx.AsyncClient, settings: config.Settings) -> None:
    _, owner = await create(settings, "owner")
    cross = await client.post("/signin", data={"key": owner}, headers={"origin": "https://evil.example"})
    assert cross.status_code == 403
    client.cookies.set("sr_session", "x" * 43)
    assert (await client.get("/")).status_code == 401
    redirected = await client.post("/signin", data={"key": owner, "next": "//evil.example/x"})
    assert redirected.headers["location"] == "/"


async def test_the_live_poll_is_revalidated_by_etag(client: httpx.AsyncClient, settings: config.Settings) -> None:
    await some_sales(client, settings)
    pages = client.app.state.service.pages  # type: ignore[attr-defined]
    ticks = [0.0]
    pages.clock = lambda: ticks[0]  # the cache's monotonic clock, in the test's hands
    first = await client.get("/", params={"month": MONTH, "fragment": "1"})
    assert first.status_code == 200 and "<html" not in first.text and 'id="top-stores"' in first.text
    assert first.headers["cache-control"] == "no-store"  # the script revalidates; nothing is kept on disk
    tag = first.headers["etag"]
    same = await client.get("/", params={"month": MONTH, "fragment": "1"}, headers={"if-none-match": tag})
    assert same.status_code == 304 and same.content == b""
    await sell(client, {"product_id": 3, "store_id": 3, "sold_at": f"{MONTH}-11T10:00:00Z"})
    # While sales come in, a page is read again once per settle second, not at each sale.
    settled = await client.get("/", params={"month": MONTH, "fragment": "1"}, headers={"if-none-match": tag})
    assert settled.status_code == 304
    # The poll that first reads the sale's counter would change the page's stamp once more: done now.
    await client.app.state.service.catalog.changes.poll()  # type: ignore[attr-defined]
    ticks[0] += pages.settle + 0.01
    changed = await client.get("/", params={"month": MONTH, "fragment": "1"}, headers={"if-none-match": tag})
    assert changed.status_code == 200 and changed.headers["etag"] != tag
    # Nothing sold since: the page is kept however long it stays open.
    reads = pages.reads
    ticks[0] += 3600
    again = await client.get(
        "/", params={"month": MONTH, "fragment": "1"}, headers={"if-none-match": changed.headers["etag"]}
    )
    assert again.status_code == 304 and pages.reads == reads


async def test_a_slow_or_odd_sign_in_form_is_refused(client: httpx.AsyncClient, settings: config.Settings) -> None:
    await create(settings, "owner")
    as_json = await client.post("/signin", json={"key": "x"})
    assert as_json.status_code == 415
    huge = await client.post(
        "/signin", content=b"key=" + b"x" * 5000, headers={"content-type": "application/x-www-form-urlencoded"}
    )
    assert huge.status_code == 413


@pytest.mark.parametrize("month", ["0001-11", "1999-12"])
async def test_a_month_before_any_sale_is_shown_empty_as_the_api_says(client: httpx.AsyncClient, month: str) -> None:
    assert (await client.get("/reports/top-stores", params={"month": month})).json() == []
    page = await client.get("/", params={"month": month})
    assert page.status_code == 200
    assert rows(page.text, "top-stores") == [] and rows(page.text, "top-products") == []
    assert "November" in page.text and f'value="{month}"' in page.text
    assert (await client.get("/stores/1", params={"month": month})).status_code == 200
    series = await client.get("/reports/revenue-by-month", params={"until": "0001-02", "months": 12})
    assert [m["month"] for m in series.json()] == ["0001-01", "0001-02"]


async def test_the_year_0_is_refused_as_the_page_refuses_it(client: httpx.AsyncClient) -> None:
    for path, name in (
        ("/reports/revenue-by-month", "until"),
        ("/reports/top-stores", "month"),
        ("/reports/top-products", "month"),
    ):
        problem = assert_problem(await client.get(path, params={name: "0000-01"}), 422)
        assert problem["errors"][0]["field"] == name and "0001..9999" in problem["errors"][0]["message"]


async def test_the_first_month_there_is_has_no_month_before_it(client: httpx.AsyncClient) -> None:
    page = await client.get("/", params={"month": "0001-01"})
    assert page.status_code == 200, page.text
    assert rows(page.text, "top-stores") == [] and rows(page.text, "top-products") == []
    assert (await client.get("/", params={"month": "0001-01", "fragment": "1"})).status_code == 200


@pytest.mark.parametrize("month", ["2026-13", "0000-01", "２０２６-06", "2026-6", "\x00", "x" * 5000])
async def test_a_malformed_month_is_a_400_page_in_the_page_language(client: httpx.AsyncClient, month: str) -> None:
    for path in ("/", "/stores/1"):
        page = await client.get(path, params={"month": month, "lang": "ru"})
        assert page.status_code == 400, path
        assert page.headers["content-type"].startswith("text/html")
        assert "ГГГГ-ММ" in page.text and 'lang="ru"' in page.text


async def test_a_sign_in_form_that_never_arrives_is_408(settings: config.Settings, clock: Clock) -> None:
    """No key is needed to send the form, so a body that stops coming must not hold the server."""
    never = asyncio.Event()

    async def trickle() -> AsyncIterator[bytes]:
        yield b"key="
        await never.wait()  # the client goes silent; the app's body timeout ends the request

    async with app_client(replace(settings, body_timeout=0.2), clock) as http:
        await create(settings, "owner")
        form = {"content-type": "application/x-www-form-urlencoded"}
        slow = await http.post("/signin", content=trickle(), headers=form)
        assert slow.status_code == 408
        assert slow.json()["title"] == "Request Timeout"


async def test_behind_a_tls_proxy_the_public_origin_signs_in(settings: config.Settings, clock: Clock) -> None:
    """A proxy terminates TLS and passes the request on by its own name: the browser's Origin is the public
    URL's, which the service cannot see, so SALESREPORT_PUBLIC_URL says it."""
    public = replace(settings, public_origin="https://reports.example.com")
    async with app_client(public, clock) as http:
        _, owner = await create(settings, "owner")
        inside = {"host": "10.0.0.5:8000"}
        signed = await http.post(
            "/signin", data={"key": owner}, headers={**inside, "origin": "https://reports.example.com"}
        )
        assert signed.status_code == 303
        assert "Secure" in signed.headers["set-cookie"]  # the browser's leg is TLS, though ours is not
        for other in ("http://reports.example.com", "https://evil.example", "http://10.0.0.5:8000"):
            refused = await http.post("/signin", data={"key": owner}, headers={**inside, "origin": other})
            assert refused.status_code == 403, other
    async with app_client(settings, clock) as http:  # without it: the Host the request came to
        signed = await http.post("/signin", data={"key": owner}, headers={"origin": "http://127.0.0.1"})
        assert signed.status_code == 303 and "Secure" not in signed.headers["set-cookie"]


@pytest.mark.parametrize(
    ("accept", "csv_wanted"),
    [
        ("text/csv", True),
        ("application/json, text/csv;q=0.5", False),
        ("text/csv;q=0.9, application/json;q=0.1", True),
        ("text/csv;q=0", False),
        ("text/csv;q=nonsense", False),
        ("*/*", False),
        ("*/*, text/csv;q=0.5", False),
        ("application/*, text/csv;q=0.5", False),
        ("text/csv, */*;q=0.1", True),
        ("text/csv, application/json", True),
        ("TEXT/*, application/json;q=0.5", True),
        # The most specific range names an offer's weight: CSV at 0.1 here, below JSON's 0.5.
        ("text/*;q=0.9, text/csv;q=0.1, application/json;q=0.5", False),
        ("text/*, text/csv;q=0", False),
        # Too long to read: as if not sent (cut at its limit, this one would lose its q=0).
        ("application/json;q=0.5," + " " * 969 + "text/csv;q=0", False),
    ],
)
async def test_csv_by_accept_follows_its_weights(client: httpx.AsyncClient, accept: str, csv_wanted: bool) -> None:
    response = await client.get("/reports/top-stores", params={"month": MONTH}, headers={"accept": accept})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/csv") is csv_wanted
    # Live figures read with a key or a cookie, JSON or CSV by Accept: no shared cache may keep one for another.
    assert response.headers["cache-control"] == "private, no-store"
    assert (
        response.headers["vary"] == "Accept, Accept-Encoding, Cookie"
        and response.headers["x-content-type-options"] == "nosniff"
    )


async def test_accept_sent_as_several_lines_is_read_whole(client: httpx.AsyncClient) -> None:
    lines = [("accept", "*/*;q=0.1"), ("accept", "text/csv")]
    response = await client.get("/reports/top-stores", params={"month": MONTH}, headers=lines)
    assert response.headers["content-type"].startswith("text/csv")


async def test_fifty_polls_at_once_cost_one_render(client: httpx.AsyncClient, settings: config.Settings) -> None:
    from salesreport.web import views

    await some_sales(client, settings)
    built = 0
    month_view = views.month_view

    async def counted(conn: AsyncConnection, month: int) -> views.MonthView:
        nonlocal built
        built += 1
        return await month_view(conn, month)

    views.month_view = counted
    try:
        polls = await asyncio.gather(*(client.get("/", params={"month": MONTH, "fragment": "1"}) for _ in range(50)))
    finally:
        views.month_view = month_view
    assert {p.status_code for p in polls} == {200} and len({p.headers["etag"] for p in polls}) == 1
    assert built == 1


async def test_a_poll_keeps_its_page_language_whatever_another_tab_chose(client: httpx.AsyncClient) -> None:
    russian = await client.get("/", params={"month": MONTH, "lang": "ru"})
    poll = re.search(r'data-fragment="([^"]+)"', russian.text)
    assert poll is not None
    await client.get("/", params={"month": MONTH, "lang": "en"})  # another tab switches; the cookie says en
    fragment = await client.get(poll.group(1).replace("&amp;", "&"))
    assert "Июнь 2026" in fragment.text or "июнь 2026" in fragment.text.lower()


async def test_the_sign_in_address_itself_leads_back_to_the_form(client: httpx.AsyncClient) -> None:
    back = await client.get("/signin", params={"lang": "ru"})
    assert back.status_code == 303 and back.headers["location"] == "/?lang=ru"
    assert (await client.get("/signin", params={"lang": "../x"})).headers["location"] == "/"


@pytest.mark.parametrize(("lang", "expected"), [("en", "JPY\xa01,234.50"), ("ru", "1\xa0234,50\xa0¥")])
def test_money_keeps_two_decimals_whatever_the_currency(lang: str, expected: str) -> None:
    from salesreport.web.i18n import Texts

    assert Texts(lang, "JPY").money("1234.50") == expected


async def test_csv_cells_that_a_spreadsheet_would_run_are_quoted(
    client: httpx.AsyncClient, settings: config.Settings
) -> None:
    odd = {8: '=HYPERLINK("http://x")', 9: "-inf", 10: "+1_000", 11: "@SUM(A1)", 12: "-12.50"}
    await seed(settings, [], [{"id": i, "address": a, "timezone": "UTC"} for i, a in odd.items()])
    await sell(client, [{"product_id": 1, "store_id": i, "sold_at": f"{MONTH}-10T10:00:00Z"} for i in odd])
    response = await client.get("/reports/top-stores", params={"month": MONTH, "format": "csv"})
    cells = {int(r["id"]): r["address"] for r in csv.DictReader(io.StringIO(response.text.lstrip("\ufeff")))}
    assert {i: cells[i] for i in odd} == {i: (a if i == 12 else "'" + a) for i, a in odd.items()}


async def test_odd_sign_in_origins_and_lengths_are_refused(
    client: httpx.AsyncClient, settings: config.Settings
) -> None:
    _, owner = await create(settings, "owner")
    for origin in ("x://127.0.0.1", "null", "", "http://127.0.0.1.evil.example"):
        refused = await client.post("/signin", data={"key": owner}, headers={"origin": origin})
        assert refused.status_code == 403, origin
    form = {"content-type": "application/x-www-form-urlencoded"}
    for length in ("abc", "1e3", "-1"):
        odd = await client.post("/signin", content=b"key=x", headers={**form, "content-length": length})
        assert odd.status_code == 400, length
    huge = await client.post("/signin", content=b"key=x", headers={**form, "content-length": "0" * 5000 + "9" * 5000})
    assert huge.status_code == 413


# --- the live poll, held while the page is unchanged ----------------------------------------------------


@pytest.fixture
def quick_live(monkeypatch: pytest.MonkeyPatch) -> None:
    """Answer a held poll as soon as the page changed (no gathering), and give up after 30 s."""
    from salesreport.web import pages

    monkeypatch.setattr(pages, "LIVE_GATHER_S", 0.0)
    monkeypatch.setattr(pages, "LIVE_WAIT_S", 30.0)


async def _held(client: httpx.AsyncClient, tag: str) -> asyncio.Task[httpx.Response]:
    """A live poll of the month's page that the server holds: it has not answered after the event loop
    ran everything else that was ready."""
    poll = asyncio.ensure_future(
        client.get("/", params={"month": MONTH, "fragment": "1", "wait": "1"}, headers={"if-none-match": tag})
    )
    for _ in range(50):
        await asyncio.sleep(0)
    assert not poll.done(), poll.result().status_code if poll.done() else None
    return poll


async def test_a_held_poll_answers_when_a_sale_changes_the_page(
    client: httpx.AsyncClient, settings: config.Settings, quick_live: None
) -> None:
    await some_sales(client, settings)
    client.app.state.service.pages.settle = 0.0  # type: ignore[attr-defined]  # every change, at once
    first = await client.get("/", params={"month": MONTH, "fragment": "1"})
    poll = await _held(client, first.headers["etag"])
    await sell(client, {"product_id": 3, "store_id": 3, "sold_at": f"{MONTH}-11T10:00:00Z"})
    changed = await asyncio.wait_for(poll, 10)
    assert changed.status_code == 200 and changed.headers["etag"] != first.headers["etag"]
    assert "350 5th Ave" in changed.text


async def test_a_held_poll_answers_304_when_its_time_is_up_or_the_worker_drains(
    client: httpx.AsyncClient, settings: config.Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    from salesreport.web import pages

    await some_sales(client, settings)
    tag = (await client.get("/", params={"month": MONTH, "fragment": "1"})).headers["etag"]
    monkeypatch.setattr(pages, "LIVE_WAIT_S", 0.05)
    timed_out = await client.get(
        "/", params={"month": MONTH, "fragment": "1", "wait": "1"}, headers={"if-none-match": tag}
    )
    assert timed_out.status_code == 304 and timed_out.headers["etag"] == tag
    monkeypatch.setattr(pages, "LIVE_WAIT_S", 30.0)
    poll = await _held(client, tag)
    svc = client.app.state.service  # type: ignore[attr-defined]
    svc.draining = True
    svc.wake()  # what SIGTERM does (see drain)
    drained = await asyncio.wait_for(poll, 10)
    assert drained.status_code == 304 and drained.headers["connection"] == "close"


def _poll_scope(tag: str) -> dict[str, Any]:
    """The ASGI scope of a live poll of the month's page, sent with the page's ETag ``tag``."""
    query = f"month={MONTH}&fragment=1&wait=1".encode()
    return http_scope("GET", "/", [(b"host", b"127.0.0.1"), (b"if-none-match", tag.encode())], query)


async def test_a_held_poll_ends_when_its_browser_goes_away(
    client: httpx.AsyncClient, settings: config.Settings, quick_live: None
) -> None:
    """A tab closed while its poll is held: the server hears the disconnect (the ASGI message) and ends
    the poll at once, not when its LIVE_WAIT_S (30 s here) is up."""
    await some_sales(client, settings)
    tag = (await client.get("/", params={"month": MONTH, "fragment": "1"})).headers["etag"]
    messages: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    messages.put_nowait({"type": "http.request", "body": b"", "more_body": False})
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    before = await scrape(client)
    poll = asyncio.ensure_future(client.app(_poll_scope(tag), messages.get, send))  # type: ignore[attr-defined]

    async def held() -> bool:
        return (await scrape(client)).since(before, "salesreport_live_polls_held") == 1

    await eventually(held, what="the poll is held")
    assert not poll.done() and not sent
    messages.put_nowait({"type": "http.disconnect"})
    await asyncio.wait_for(poll, 10)
    assert sent[0]["status"] == 304
    assert (await scrape(client)).since(before, "salesreport_live_polls_held") == 0


async def test_a_poll_that_sends_a_body_is_not_read_while_it_is_held(
    client: httpx.AsyncClient, settings: config.Settings, quick_live: None
) -> None:
    """Watching for the disconnect reads nothing but a GET's empty body: a poll that streams a body
    anyway (or a server that keeps answering ``receive`` at once) is held, unread, until its end."""
    await some_sales(client, settings)
    tag = (await client.get("/", params={"month": MONTH, "fragment": "1"})).headers["etag"]
    for message in (
        {"type": "http.request", "body": b"x" * 65536, "more_body": True},
        {"type": "http.request", "body": b"", "more_body": False},
    ):
        calls = 0

        async def receive(message: dict[str, Any] = message) -> dict[str, Any]:
            nonlocal calls
            calls += 1
            await asyncio.sleep(0)  # answers at once, yet lets the loop turn
            return message

        sent: list[dict[str, Any]] = []

        async def send(message: dict[str, Any], sent: list[dict[str, Any]] = sent) -> None:
            sent.append(message)

        poll = asyncio.ensure_future(client.app(_poll_scope(tag), receive, send))  # type: ignore[attr-defined]
        for _ in range(50):
            await asyncio.sleep(0)
        assert not poll.done() and calls <= 2, calls
        svc = client.app.state.service  # type: ignore[attr-defined]
        svc.draining = True
        svc.wake()
        await asyncio.wait_for(poll, 10)
        svc.draining = False
        assert sent[0]["status"] == 304


async def test_an_owner_signs_in_with_a_key_created_a_moment_ago(
    client: httpx.AsyncClient, settings: config.Settings
) -> None:
    """The worker's copy of the keys vouches for itself for up to ``changes.BOUND``; a sign-in reads the
    keys' counter again rather than refuse a key created, or accept one revoked, in that time."""
    svc = client.app.state.service  # type: ignore[attr-defined]
    revoked_id, revoked = await create(settings, "owner")  # the service is no longer open
    changes = svc.keys.changes
    await changes.close()  # no poller: only the requests read the counters
    ticks = itertools.count()
    changes.clock = lambda: 1e9 + next(ticks) * 1e-6  # after every read so far; far less than BOUND passes
    await svc.keys.refresh(recheck=True)  # the copy, read on this clock: fresh from now on
    assert svc.keys.protected
    _, owner = await create(settings, "owner")
    signed = await client.post("/signin", data={"key": owner})
    assert signed.status_code == 303, signed.text
    assert (await client.get("/", params={"month": MONTH})).status_code == 200
    client.cookies.clear()
    await revoke(settings, revoked_id)  # a key the copy still holds as active
    assert (await client.post("/signin", data={"key": revoked})).status_code == 401


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
async def test_a_session_opened_on_one_worker_with_a_new_key_is_good_on_another(
    settings: config.Settings, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Signed in on worker A with a key created a moment ago, the page comes from worker B, whose copy
    of the keys does not have it yet: B reads the keys' counter rather than refuse the session. A token
    that is not of a key's form, a sign-in that cannot succeed, reads nothing."""
    _, first = await create(settings, "owner")
    async with app_client(settings, clock) as a, app_client(settings, clock) as b:
        for each in (a, b):
            assert (await each.post("/signin", data={"key": first})).status_code == 303
            each.cookies.clear()
            changes = each.app.state.service.keys.changes  # type: ignore[attr-defined]
            await changes.close()  # no poller: only the requests read the counters
            ticks = itertools.count()
            changes.clock = lambda ticks=ticks: (
                1e9 + next(ticks) * 1e-6
            )  # after every read so far; far less than BOUND passes
            await each.app.state.service.keys.refresh(recheck=True)  # type: ignore[attr-defined]
        _, owner = await create(settings, "owner")
        assert (await a.post("/signin", data={"key": owner})).status_code == 303
        b.cookies.update(a.cookies)
        assert (await b.get("/", params={"month": MONTH})).status_code == 200

        reads = 0
        counted = db.get_version

        async def counting(conn: Any, name: str) -> int:
            nonlocal reads
            reads += 1
            return await counted(conn, name)

        monkeypatch.setattr(db, "get_version", counting)
        b.cookies.clear()
        for token in ("sr_nope", "x" * 46, ""):
            assert (await b.post("/signin", data={"key": token})).status_code == 401
        assert reads == 0
        assert (await b.post("/signin", data={"key": "sr_" + "A" * 43})).status_code == 401
        assert reads == 1


async def test_a_held_poll_of_a_revoked_key_ends_at_once(
    client: httpx.AsyncClient, settings: config.Settings, quick_live: None
) -> None:
    await some_sales(client, settings)
    owner_id, owner = await create(settings, "owner")
    assert (await client.post("/signin", data={"key": owner})).status_code == 303
    tag = (await client.get("/", params={"month": MONTH, "fragment": "1"})).headers["etag"]
    poll = await _held(client, tag)
    await revoke(settings, owner_id)
    ended = await asyncio.wait_for(poll, 10)
    assert ended.status_code == 401 and 'name="key"' in ended.text


async def test_a_pages_reads_see_one_moment(client: httpx.AsyncClient, settings: config.Settings) -> None:
    """A sale committed between two of a page's reads shows in neither (it shows in the next page),
    where two reads without ``snapshot`` would disagree."""
    await some_sales(client, settings)
    svc = client.app.state.service  # type: ignore[attr-defined]
    month = int(MONTH.replace("-", ""))
    sold = iter([3, 2])  # stores without a sale in the month

    async def work(conn: Any) -> tuple[list[Any], list[Any]]:
        before = await reports.top_stores(conn, month)
        await sell(client, {"product_id": 3, "store_id": next(sold), "sold_at": f"{MONTH}-11T10:00:00Z"})
        return before, await reports.top_stores(conn, month)

    (before, after), _ = await svc.reads.read(work, snapshot=True)
    assert before == after
    (before, after), _ = await svc.reads.read(work)
    assert 3 in [s.id for s in before] and {s.id for s in after} - {s.id for s in before} == {2}


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
async def test_a_held_poll_on_one_worker_answers_a_sale_on_another(
    settings: config.Settings, clock: Clock, quick_live: None
) -> None:
    async with app_client(settings, clock) as a, app_client(settings, clock) as b:
        await some_sales(a, settings)
        b.app.state.service.pages.settle = 0.0  # type: ignore[attr-defined]
        tag = (await b.get("/", params={"month": MONTH, "fragment": "1"})).headers["etag"]
        poll = await _held(b, tag)
        await sell(a, {"product_id": 3, "store_id": 3, "sold_at": f"{MONTH}-11T10:00:00Z"})
        changed = await asyncio.wait_for(poll, 10)
        assert changed.status_code == 200 and "350 5th Ave" in changed.text


async def test_a_poll_that_comes_after_a_change_is_not_held_on_the_page_before_it(
    client: httpx.AsyncClient, settings: config.Settings, quick_live: None
) -> None:
    """A sale lands while the page is kept for its settle time, before the browser's next poll: the poll
    is answered with the new page once that time is over, not held until the next change."""
    await some_sales(client, settings)
    client.app.state.service.pages.settle = 0.2  # type: ignore[attr-defined]
    first = await client.get("/", params={"month": MONTH, "fragment": "1"})
    await sell(client, {"product_id": 3, "store_id": 3, "sold_at": f"{MONTH}-11T10:00:00Z"})
    poll = client.get(
        "/", params={"month": MONTH, "fragment": "1", "wait": "1"}, headers={"if-none-match": first.headers["etag"]}
    )
    changed = await asyncio.wait_for(poll, 10)  # held until the next change (LIVE_WAIT_S is 30 s) if wrong
    assert changed.status_code == 200 and "350 5th Ave" in changed.text


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
async def test_a_worker_never_answers_a_newer_page_with_an_older_one(settings: config.Settings, clock: Clock) -> None:
    """Worker A shows a sale; the browser's next poll, with A's new ETag, reaches worker B, which keeps
    its page from before the sale for its settle time: B reads again rather than go back."""
    async with app_client(settings, clock) as a, app_client(settings, clock) as b:
        await some_sales(a, settings)
        b.app.state.service.pages.clock = lambda: 0.0  # type: ignore[attr-defined]  # B's settle never ends
        params = {"month": MONTH, "fragment": "1"}
        old = await b.get("/", params=params)
        changes: Changes = b.app.state.service.catalog.changes  # type: ignore[attr-defined]
        before = await changes.stamp()
        await sell(a, {"product_id": 3, "store_id": 3, "sold_at": f"{MONTH}-11T10:00:00Z"})
        new = await a.get("/", params=params)
        assert new.headers["etag"] != old.headers["etag"]

        async def b_knows() -> bool:
            return await changes.stamp() != before

        await eventually(b_knows, what="worker B has read the counters since the sale")
        answer = await b.get("/", params=params, headers={"if-none-match": new.headers["etag"]})
        assert answer.status_code == 304, answer.text[:200]
