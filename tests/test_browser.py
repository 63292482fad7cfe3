"""The dashboard in a real browser: Debian's Chromium driven by Playwright (no browser download).

A server is started as production runs it (Granian, one worker) on an SQLite file, its clock stopped
at ``NOW`` (``tests/browser_app.py``). The pages are checked against the JSON API on the same data:
the tables, the month switch without a reload, a sale showing up live, the CSV download's bytes,
signing in and out with owner, pos and revoked keys, Russian and English, the phone width, and no
serious or critical accessibility violations (axe-core, from ``tests/browser``'s npm lock).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import ROOT

playwright = pytest.importorskip("playwright.sync_api")

CHROMIUM = "/usr/bin/chromium"
AXE = ROOT / "tests" / "browser" / "node_modules" / "axe-core" / "axe.min.js"
NOW = "2026-06-20T12:00:00+00:00"
MONTH = "2026-06"
STORES = (
    "id,address,timezone\n"
    '1,"Тверская ул., 1, Москва",Europe/Moscow\n'
    '2,"5 Svetlanskaya, Vladivostok",Asia/Vladivostok\n'
    "3,350 5th Ave,America/New_York\n"
)
PRODUCTS = "id,name,price\n1,Молоко,0.10\n2,Bread,45.50\n3,Coffee,1234.56\n"
SALES = [
    {"product_id": 2, "store_id": 1, "quantity": 3, "sold_at": "2026-06-10T10:00:00Z"},
    {"product_id": 3, "store_id": 2, "quantity": 1, "sold_at": "2026-06-11T10:00:00Z", "unit_price": "1000.00"},
    {"product_id": 1, "store_id": 3, "quantity": 9, "sold_at": "2026-06-12T10:00:00Z"},
    {"product_id": 2, "store_id": 2, "quantity": 2, "sold_at": "2026-05-10T10:00:00Z"},
]
NEEDS = (
    "browser tests skipped: they need Debian's Chromium at /usr/bin/chromium (apt-get install chromium) and "
    "axe-core (npm ci --prefix tests/browser); `make test` and .ci/run install both"
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _cli(env: dict[str, str], *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "salesreport", *args], env=env, cwd=ROOT, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


class Server:
    def __init__(self, workdir: Path, keys: bool) -> None:
        self.env = {**os.environ, "DATABASE_URL": f"sqlite:///{workdir / 'dash.db'}", "SALESREPORT_TEST_NOW": NOW}
        self.env["SALESREPORT_LOG_FORMAT"] = "json"
        _cli(self.env, "migrate")
        (workdir / "s.csv").write_text(STORES)
        (workdir / "p.csv").write_text(PRODUCTS)
        _cli(self.env, "import", "--stores", str(workdir / "s.csv"), "--products", str(workdir / "p.csv"))
        self.owner = self.pos = ""
        if keys:
            self.owner = _cli(self.env, "keys", "create", "--role", "owner").strip().splitlines()[-1]
            self.pos = _cli(self.env, "keys", "create", "--role", "pos", "--store", "1").strip().splitlines()[-1]
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        command = [sys.executable, "-m", "granian", "--interface", "asgi", "--factory", "--host", "127.0.0.1"]
        self.process = subprocess.Popen(
            [*command, "--port", str(self.port), "tests.browser_app:app"],
            env=self.env,
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{self.url}/health/ready", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert self.process.poll() is None, "the server exited"
            assert time.monotonic() < deadline, "the server did not get ready within 30 s"
            time.sleep(0.05)
        self.http = httpx.Client(base_url=self.url, headers={"authorization": f"Bearer {self.owner}"} if keys else {})
        response = self.http.post(
            "/sales", json=SALES, headers={"authorization": f"Bearer {self.owner}"} if keys else {}
        )
        assert response.status_code == 201, response.text

    def stop(self) -> None:
        self.http.close()
        self.process.terminate()
        self.process.wait(timeout=10)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).exists() or not AXE.exists():
        if os.environ.get("CI") == "true":
            pytest.fail(NEEDS)
        pytest.skip(NEEDS)
    with playwright.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    served = Server(tmp_path_factory.mktemp("open"), keys=False)
    yield served
    served.stop()


@pytest.fixture(scope="module")
def protected(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    served = Server(tmp_path_factory.mktemp("protected"), keys=True)
    yield served
    served.stop()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(locale="en-US", accept_downloads=True)
    yield context.new_page()
    context.close()


def _table(page: Any, table: str) -> list[list[str]]:
    rows: list[list[str]] = page.eval_on_selector_all(
        f"#{table} tbody tr[data-id]",
        "rows => rows.map(r => [r.dataset.id, ...[...r.querySelectorAll('[data-value]')].map(c => c.dataset.value)])",
    )
    return rows


def test_the_tables_are_the_reports(server: Server, page: Any) -> None:
    page.goto(f"{server.url}/?month={MONTH}")
    stores = server.http.get("/reports/top-stores", params={"month": MONTH}).json()
    assert _table(page, "top-stores") == [[str(s["id"]), s["revenue"]] for s in stores]
    products = server.http.get("/reports/top-products", params={"month": MONTH}).json()
    assert _table(page, "top-products") == [[str(p["id"]), str(p["quantity"]), p["revenue"]] for p in products]
    assert page.get_by_label("Month", exact=True).input_value() == MONTH
    assert page.locator("svg.chart").count() == 3
    assert page.locator("svg.chart[role=img][aria-label]").count() == 3
    page.get_by_role("link", name="Тверская ул., 1, Москва").click()
    page.wait_for_url(f"{server.url}/stores/1?month={MONTH}")
    assert page.locator("#timezone").inner_text() == "Europe/Moscow"


def test_the_month_switches_without_a_reload(server: Server, page: Any) -> None:
    page.goto(f"{server.url}/?month={MONTH}")
    page.evaluate("window.stillThisPage = true")
    page.get_by_label("Month", exact=True).fill("2026-05")
    page.get_by_label("Month", exact=True).dispatch_event("change")
    playwright.expect(page.locator("h1")).to_have_text("May 2026")
    assert page.evaluate("window.stillThisPage") is True
    assert page.url.endswith("?month=2026-05")
    stores = server.http.get("/reports/top-stores", params={"month": "2026-05"}).json()
    assert _table(page, "top-stores") == [[str(s["id"]), s["revenue"]] for s in stores]


def test_a_sale_shows_up_live(server: Server, page: Any) -> None:
    page.goto(f"{server.url}/?month={MONTH}")
    before = _table(page, "top-stores")
    response = server.http.post("/sales", json={"product_id": 3, "store_id": 3, "sold_at": "2026-06-15T10:00:00Z"})
    assert response.status_code == 201
    after = server.http.get("/reports/top-stores", params={"month": MONTH}).json()
    expected = [[str(s["id"]), s["revenue"]] for s in after]
    assert expected != before
    page.wait_for_function(
        "expected => JSON.stringify([...document.querySelectorAll('#top-stores tbody tr[data-id]')].map(r =>"
        " [r.dataset.id, ...[...r.querySelectorAll('[data-value]')].map(c => c.dataset.value)])) === expected",
        arg=json.dumps(expected, separators=(",", ":")),
        timeout=5000,
    )
    # Through Granian, the page and the live poll's new fragment came gzip-compressed (fewer bytes on the
    # wire than the browser decoded), and the poll that found the change was answered in full.
    sizes = page.evaluate(
        "() => [performance.getEntriesByType('navigation')[0], ...performance.getEntriesByType('resource')"
        ".filter(e => e.name.includes('fragment=1'))].map(e => [e.name, e.encodedBodySize, e.decodedBodySize])"
    )
    assert len(sizes) >= 2 and all(0 < encoded < decoded / 2 for _, encoded, decoded in sizes if decoded), sizes
    assert any(decoded for _, _, decoded in sizes[1:]), sizes


def test_the_csv_download_is_the_report(server: Server, page: Any) -> None:
    page.goto(f"{server.url}/?month={MONTH}")
    with page.expect_download() as download:
        page.get_by_role("link", name="Top stores as CSV").click()
    saved = Path(download.value.path()).read_bytes()
    assert download.value.suggested_filename == f"top-stores-{MONTH}.csv"
    assert saved == server.http.get("/reports/top-stores", params={"month": MONTH, "format": "csv"}).content
    assert "Тверская ул., 1, Москва".encode() in saved


def test_russian_and_english(server: Server, browser: Any) -> None:
    context = browser.new_context(locale="ru-RU")
    page = context.new_page()
    page.goto(f"{server.url}/?month={MONTH}")
    assert page.locator("html").get_attribute("lang") == "ru"
    assert page.locator("h1").inner_text() == "Июнь 2026"
    assert "₽" in page.locator("#top-stores").inner_text()
    page.get_by_role("link", name="English").click()
    playwright.expect(page.locator("h1")).to_have_text("June 2026")
    page.goto(f"{server.url}/?month={MONTH}")  # the choice is remembered
    assert page.locator("html").get_attribute("lang") == "en"
    context.close()


def test_a_phone_sees_the_whole_page(server: Server, browser: Any) -> None:
    context = browser.new_context(viewport={"width": 360, "height": 780})
    page = context.new_page()
    page.goto(f"{server.url}/?month={MONTH}")
    assert page.evaluate("document.documentElement.scrollWidth") <= 360
    context.close()


@pytest.mark.parametrize("width", [1200, 360])
@pytest.mark.parametrize("path", [f"/?month={MONTH}", f"/stores/2?month={MONTH}", f"/?month={MONTH}&lang=ru"])
def test_no_serious_accessibility_violations(server: Server, browser: Any, path: str, width: int) -> None:
    # bypass_csp: to inject axe; the page's own policy is tested elsewhere.
    context = browser.new_context(bypass_csp=True, viewport={"width": width, "height": 800})
    page = context.new_page()
    page.goto(server.url + path)
    page.add_script_tag(path=str(AXE))
    result = page.evaluate("axe.run()")
    serious = [
        (v["id"], v["impact"], len(v["nodes"])) for v in result["violations"] if v["impact"] in ("serious", "critical")
    ]
    assert serious == []
    context.close()


def test_signing_in_and_out(protected: Server, browser: Any) -> None:
    context = browser.new_context(locale="en-US")
    page = context.new_page()
    page.goto(f"{protected.url}/?month={MONTH}")
    key = page.get_by_label("API key")
    assert key.get_attribute("type") == "password"
    key.fill(protected.pos)
    page.get_by_role("button", name="Sign in").click()
    playwright.expect(page.get_by_role("alert")).to_contain_text("pos key")
    page.get_by_label("API key").fill(protected.owner)
    page.get_by_role("button", name="Sign in").click()
    playwright.expect(page.locator("h1")).to_have_text("June 2026")
    assert protected.owner not in page.url
    assert page.evaluate("document.cookie") == ""  # HttpOnly: no script reads the session
    assert page.evaluate("JSON.stringify(localStorage)") == "{}"
    page.get_by_role("button", name="Sign out").click()
    playwright.expect(page.get_by_label("API key")).to_be_visible()

    # A revoked key's session ends at once.
    second = _cli(protected.env, "keys", "create", "--role", "owner").strip().splitlines()[-1]
    page.get_by_label("API key").fill(second)
    page.get_by_role("button", name="Sign in").click()
    playwright.expect(page.locator("h1")).to_have_text("June 2026")
    listed = _cli(protected.env, "keys", "list").splitlines()
    second_id = max(int(line.split()[0]) for line in listed)
    _cli(protected.env, "keys", "revoke", str(second_id))
    # The open page notices by itself: its held live poll is answered 401, and it loads the sign-in form.
    playwright.expect(page.get_by_label("API key")).to_be_visible()
    context.close()


def test_screenshots_for_the_readme(server: Server, browser: Any) -> None:
    """docs/ holds what the README shows; they are written again when SALESREPORT_SCREENSHOTS=1."""
    if os.environ.get("SALESREPORT_SCREENSHOTS") != "1":
        assert (ROOT / "docs" / "dashboard.png").exists() and (ROOT / "docs" / "store.png").exists()
        return
    context = browser.new_context(viewport={"width": 1200, "height": 900}, locale="en-US")
    page = context.new_page()
    for name, path in (("dashboard", f"/?month={MONTH}"), ("store", f"/stores/2?month={MONTH}")):
        page.goto(server.url + path)
        page.screenshot(path=str(ROOT / "docs" / f"{name}.png"), full_page=True)
    context.close()
