"""GET /metrics: what it counts, who may read it, and the samples of every worker under ``serve``.

In-process tests read the process's registry, which every app of the test process shares: they
compare a scrape after what they did with one before. The ``serve`` tests start the real server,
whose workers write their samples to one directory that any worker's scrape reads whole.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from prometheus_client.parser import text_string_to_metric_families

from salesreport import config, db, metrics
from tests import pg
from tests.conftest import PRODUCTS, STORES, eventually, scalar, seed
from tests.test_auth import create, revoke
from tests.test_faults import Servers, cli, wait_ready

pytestmark = pytest.mark.anyio


class Scrape:
    """One answer of GET /metrics, parsed: a sample's value by its name and labels (0 if absent)."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.values: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                self.values[(sample.name, frozenset(sample.labels.items()))] = sample.value

    def has(self, name: str, **labels: str) -> bool:
        return (name, frozenset(labels.items())) in self.values

    def __call__(self, name: str, **labels: str) -> float:
        return self.values.get((name, frozenset(labels.items())), 0.0)

    def since(self, before: Scrape, name: str, **labels: str) -> float:
        """How much the sample grew since ``before``."""
        return self(name, **labels) - before(name, **labels)

    def routes(self) -> set[str]:
        return {dict(labels)["route"] for name, labels in self.values if name == "salesreport_http_requests_total"}


async def scrape(http: httpx.AsyncClient, key: str | None = None) -> Scrape:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    response = await http.get("/metrics", headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    return Scrape(response.text)


def sale(key: str, store: int = 1, product: int = 2, quantity: int = 1) -> dict[str, Any]:
    return {"product_id": product, "store_id": store, "quantity": quantity, "idempotency_key": key}


# --- what is counted ------------------------------------------------------------------------------


async def test_sales_returns_and_requests_are_counted(client: httpx.AsyncClient) -> None:
    before = await scrape(client)
    for i in range(3):
        assert (await client.post("/sales", json=sale(f"one-{i}"))).status_code == 201
    many = await client.post("/sales", json=[sale(f"many-{i}", store=2) for i in range(4)])
    assert many.status_code == 201
    assert (await client.post("/sales", json=sale("one-0"))).status_code == 200  # a replay
    assert (await client.post("/sales", json=sale("bad", product=404))).status_code == 422
    sale_id = many.json()[0]["id"]
    assert (await client.post("/returns", json={"sale_id": sale_id, "idempotency_key": "r-1"})).status_code == 201
    assert (await client.get(f"/sales/{sale_id}")).status_code == 200
    assert (await client.get("/no/such/path")).status_code == 404
    after = await scrape(client)

    def delta(name: str, **labels: str) -> float:
        return after.since(before, name, **labels)

    assert delta("salesreport_sales_stored_total") == 7
    assert delta("salesreport_replays_total", writer="sales") == 1
    assert delta("salesreport_returns_stored_total") == 1
    # Every item handed to the writer is in a batch: 7 new sales and the replay.
    assert delta("salesreport_batch_size_sum", writer="sales") == 8
    batches = delta("salesreport_batch_size_count", writer="sales")
    assert 1 <= batches <= 5
    assert delta("salesreport_commit_seconds_count", writer="sales") == batches
    assert delta("salesreport_commit_seconds_count", writer="returns") == 1
    assert after("salesreport_queue_depth", writer="sales") == 0

    requests = "salesreport_http_requests_total"
    assert delta(requests, method="POST", route="/sales", status="201") == 4
    assert delta(requests, method="POST", route="/sales", status="200") == 1
    assert delta(requests, method="POST", route="/sales", status="422") == 1
    assert delta(requests, method="POST", route="/returns", status="201") == 1
    assert delta(requests, method="GET", route="/sales/{id}", status="200") == 1
    assert delta(requests, method="GET", route=metrics.UNMATCHED, status="404") == 1
    assert delta("salesreport_http_request_duration_seconds_count", method="POST", route="/sales") == 6
    assert delta("salesreport_http_request_duration_seconds_sum", method="POST", route="/sales") > 0
    # Routes by template only: no path of a request becomes a label.
    assert f"/sales/{sale_id}" not in after.routes()
    assert "/no/such/path" not in after.routes()


async def test_a_turns_requests_are_written_together_each_in_its_bucket(client: httpx.AsyncClient) -> None:
    """``record_request`` counts in memory and writes once per turn of the event loop: what one turn
    counted shows in the next scrape exactly as one observation each would (sum, buckets, +Inf)."""
    before = await scrape(client)
    durations = [0.0004, 0.001, 0.001, 0.0011, 0.03, 0.3, 9.0, 11.0]  # a bound itself counts in its bucket
    for seconds in durations:
        metrics.record_request("PATCH", "/probe", 204, seconds)
    metrics.record_request("PATCH", "/probe", 409, 0.002)
    after = await scrape(client)
    labels = {"method": "PATCH", "route": "/probe"}
    histogram = "salesreport_http_request_duration_seconds"
    assert after.since(before, "salesreport_http_requests_total", status="204", **labels) == len(durations)
    assert after.since(before, "salesreport_http_requests_total", status="409", **labels) == 1
    assert after.since(before, f"{histogram}_count", **labels) == len(durations) + 1
    assert after.since(before, f"{histogram}_sum", **labels) == pytest.approx(sum(durations) + 0.002)
    expected = {"0.001": 3, "0.0025": 5, "0.025": 5, "0.05": 6, "0.25": 6, "0.5": 7, "5.0": 7, "10.0": 8, "+Inf": 9}
    assert {le: after.since(before, f"{histogram}_bucket", le=le, **labels) for le in expected} == expected


def test_requests_counted_on_a_loop_that_ended_before_writing_them_are_written_by_the_next() -> None:
    """A loop that stops within the turn of a request leaves it counted but unwritten: the next loop's
    first request schedules the write again, for both."""
    before = Scrape(metrics.exposition()[0].decode())
    ended = asyncio.new_event_loop()

    def answered_and_stopped() -> None:
        metrics.record_request("PUT", "/probe-loops", 200, 0.001)
        ended.stop()  # before the turn's write runs

    ended.call_soon(answered_and_stopped)
    ended.run_forever()
    ended.close()

    async def answered() -> None:
        metrics.record_request("PUT", "/probe-loops", 200, 0.001)
        for _ in range(3):
            await asyncio.sleep(0)

    asyncio.run(answered())
    after = Scrape(metrics.exposition()[0].decode())
    assert after.since(before, "salesreport_http_requests_total", method="PUT", route="/probe-loops", status="200") == 2


async def test_a_method_nobody_serves_is_counted_as_other(client: httpx.AsyncClient) -> None:
    before = await scrape(client)
    assert (await client.request("BREW", "/sales")).status_code == 405
    after = await scrape(client)
    assert after.since(before, "salesreport_http_requests_total", method="OTHER", route="/sales", status="405") == 1
    assert "BREW" not in after.text


async def test_connections_in_use_per_pool(client: httpx.AsyncClient, settings: config.Settings) -> None:
    svc = client.app.state.service  # type: ignore[attr-defined]
    idle = await scrape(client)
    assert idle("salesreport_db_connections_in_use", pool="reader") == 0
    assert idle("salesreport_db_pool_size", pool="reader") == settings.pool_size
    async with svc.db.reader.connect(), svc.db.reader.connect():
        busy = await scrape(client)
    assert busy("salesreport_db_connections_in_use", pool="reader") == 2
    assert (await scrape(client))("salesreport_db_connections_in_use", pool="reader") == 0


# --- who may scrape, and the rejections counted -----------------------------------------------------


async def test_owner_and_metrics_keys_scrape_others_are_refused_and_counted(
    client: httpx.AsyncClient, settings: config.Settings
) -> None:
    _, owner = await create(settings, "owner")
    _, scraper = await create(settings, "metrics")
    _, pos = await create(settings, "pos", 1)
    revoked_id, revoked = await create(settings, "owner")
    await revoke(settings, revoked_id)
    before = await scrape(client, owner)

    async def status(key: str | None, method: str = "GET", path: str = "/metrics", body: Any = None) -> int:
        headers = {"authorization": f"Bearer {key}"} if key else {}
        return (await client.request(method, path, json=body, headers=headers)).status_code

    assert await status(None) == 401
    assert await status("sr_unknown") == 401
    assert await status(revoked) == 401
    assert await status(pos) == 403
    # A metrics key reads /metrics and nothing else.
    assert await status(scraper, "GET", "/products") == 403
    assert await status(scraper, "GET", "/reports/top-stores") == 403
    assert await status(scraper, "POST", "/sales", sale("by-scraper")) == 403
    after = await scrape(client, scraper)

    def rejected(reason: str) -> float:
        return after.since(before, "salesreport_key_rejections_total", reason=reason)

    assert (rejected("missing"), rejected("unknown"), rejected("revoked"), rejected("forbidden")) == (1, 1, 1, 4)
    assert after("salesreport_sales_stored_total") == before("salesreport_sales_stored_total")
    assert after.since(before, "salesreport_http_requests_total", method="GET", route="/metrics", status="401") == 3


async def test_a_metrics_key_cannot_sign_in_to_the_dashboard(
    client: httpx.AsyncClient, settings: config.Settings
) -> None:
    _, scraper = await create(settings, "metrics")
    before = await scrape(client, scraper)
    refused = await client.post("/signin", data={"key": scraper, "next": "/"})
    assert refused.status_code == 403 and "A metrics key cannot open the dashboard" in refused.text
    assert "sr_session" not in refused.cookies
    after = await scrape(client, scraper)
    assert after.since(before, "salesreport_key_rejections_total", reason="forbidden") == 1


async def test_open_mode_scrapes_from_loopback_only(client: httpx.AsyncClient) -> None:
    before = await scrape(client)  # no key exists: open to a loopback client
    proxied = await client.get("/metrics", headers={"x-forwarded-for": "203.0.113.9"})
    assert proxied.status_code == 401
    after = await scrape(client)
    assert after.since(before, "salesreport_key_rejections_total", reason="not_local") == 1


async def test_a_metrics_key_is_created_by_the_cli(database_url: str) -> None:
    made = cli(database_url, "keys", "create", "--role", "metrics")
    assert made.returncode == 0, made.stderr
    assert made.stdout.splitlines()[-1].startswith("sr_")
    listed = cli(database_url, "keys", "list")
    assert " metrics - " in listed.stdout
    refused = cli(database_url, "keys", "create", "--role", "metrics", "--store", "1")
    assert refused.returncode == 2
    assert "an owner or metrics key takes none" in refused.stderr


# --- serve: every worker's samples in each scrape -----------------------------------------------------


@pytest.fixture
def pg_url(pg_cluster: pg.Cluster) -> str:
    from tests.conftest import TABLES

    pg_cluster.psql(f"TRUNCATE {TABLES} RESTART IDENTITY", "salesreport")
    return pg_cluster.url("salesreport")


async def seeded(url: str) -> config.Settings:
    settings = replace(config.load(), database_url=config.async_url(url))
    await seed(settings, PRODUCTS, STORES)
    return settings


async def test_two_workers_scrape_the_sum_of_both(pg_url: str, tmp_path: Path) -> None:
    settings = await seeded(pg_url)
    made = cli(pg_url, "keys", "create", "--role", "metrics")
    assert made.returncode == 0, made.stderr
    scraper = made.stdout.splitlines()[-1]
    _, owner = await create(settings, "owner")
    servers = Servers(pg_url, 2, tmp_path)
    try:
        server = await servers.start_ready()
        serving = sa.select(sa.func.count()).select_from(db.workers)

        async def both_serve() -> bool:
            return bool(await scalar(settings, serving) == 2)

        await eventually(both_serve, within=20, what="both workers serve")

        async def post(i: int) -> None:
            # A connection each: the kernel spreads new connections over the workers (SO_REUSEPORT).
            async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
                answer = await http.post(
                    "/sales", json=sale(f"mp-{i}", store=1 + i % 4), headers={"authorization": f"Bearer {owner}"}
                )
                assert answer.status_code == 201, answer.text

        await asyncio.gather(*(post(i) for i in range(40)))
        (directory,) = metrics_directories(server.proc.pid)
        by_worker = stored_by_worker(directory)
        assert len([n for n in by_worker.values() if n > 0]) == 2, f"the sales did not go to both workers: {by_worker}"

        for _ in range(8):
            async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
                seen = await scrape(http, scraper)
            assert seen("salesreport_sales_stored_total") == 40
            assert seen("salesreport_http_requests_total", method="POST", route="/sales", status="201") == 40
            assert seen("salesreport_batch_size_sum", writer="sales") == 40
            # A gauge of each live worker, summed: both workers' pools.
            assert seen("salesreport_db_pool_size", pool="reader") == 2 * settings.pool_size
            # Not set by anything yet: no sample rather than a lag of 0.
            assert not seen.has("salesreport_replica_lag_seconds")
    finally:
        servers.kill_all()


def stored_by_worker(directory: Path) -> dict[str, float]:
    """Each worker's own count of sales stored, from the files the scrape sums."""
    from prometheus_client.mmap_dict import MmapedDict

    # prometheus_client leaves this unannotated: it yields (key, value, timestamp, position) per sample.
    read_all_values: Callable[[str], Iterator[tuple[str, float, float, int]]] = MmapedDict.read_all_values_from_file
    counts: dict[str, float] = {}
    for path in directory.glob("counter_*.db"):
        values = read_all_values(str(path))
        counts[path.stem] = sum(v for key, v, *_ in values if json.loads(key)[1] == "salesreport_sales_stored_total")
    return counts


def metrics_directories(pid: int) -> list[Path]:
    """The directories that the serve process ``pid`` made for its workers' samples."""
    return list(Path(tempfile.gettempdir()).glob(f"salesreport-metrics-{pid}-*"))


def samples_in(directory: Path) -> list[Path]:
    return list(directory.glob("*.db"))


async def test_serve_makes_its_directory_and_removes_it(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'sales.db'}"
    assert cli(url, "migrate").returncode == 0
    await seeded(url)
    servers = Servers(url, 1, tmp_path)
    try:
        server = await servers.start_ready()
        (directory,) = metrics_directories(server.proc.pid)
        assert samples_in(directory)
        server.proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(server.proc.wait, 30) == 0, server.log()
        assert metrics_directories(server.proc.pid) == []
    finally:
        servers.kill_all()


async def test_a_configured_directory_is_emptied_at_start(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'sales.db'}"
    assert cli(url, "migrate").returncode == 0
    await seeded(url)
    directory = tmp_path / "metrics"
    servers = Servers(url, 1, tmp_path, env={metrics.MULTIPROC_DIR: str(directory)})
    try:
        first = await servers.start_ready()
        async with httpx.AsyncClient(base_url=first.url, timeout=10) as http:
            assert (await http.post("/sales", json=sale("before-restart"))).status_code == 201
            assert (await scrape(http))("salesreport_sales_stored_total") == 1
        first.kill()
        assert samples_in(directory)  # what the killed server left
        second = servers.start()
        await wait_ready(second)
        async with httpx.AsyncClient(base_url=second.url, timeout=10) as http:
            assert (await scrape(http))("salesreport_sales_stored_total") == 0
    finally:
        servers.kill_all()


def test_a_configured_directory_that_holds_anything_else_is_refused(tmp_path: Path) -> None:
    """It would be emptied of samples at start and every *.db file in it read by the scrape: pointed at
    the database's own directory, that would be the database."""
    url = f"sqlite:///{tmp_path / 'sales.db'}"
    assert cli(url, "migrate").returncode == 0
    refused = subprocess.run(
        [sys.executable, "-m", "salesreport", "serve", "--port", "1"],
        env={**os.environ, "DATABASE_URL": url, metrics.MULTIPROC_DIR: str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert refused.returncode != 0
    assert "must be a directory of its own" in refused.stderr and "sales.db" in refused.stderr
    assert cli(url, "check").returncode == 0  # the database is whole


async def test_a_configured_directory_another_server_uses_is_refused(tmp_path: Path) -> None:
    """Emptied at the second server's start, it would lose the first one's counts, and each scrape
    would add up both servers' requests."""
    url = f"sqlite:///{tmp_path / 'sales.db'}"
    assert cli(url, "migrate").returncode == 0
    await seeded(url)
    directory = tmp_path / "metrics"
    env = {metrics.MULTIPROC_DIR: str(directory)}
    first, second = Servers(url, 1, tmp_path, env=env), Servers(url, 1, tmp_path / "second", env=env)
    (tmp_path / "second").mkdir()
    try:
        serving = await first.start_ready()
        async with httpx.AsyncClient(base_url=serving.url, timeout=10) as http:
            assert (await http.post("/sales", json=sale("first-server"))).status_code == 201
        refused = second.start()
        assert await asyncio.to_thread(refused.proc.wait, 60) != 0
        assert "in use by another server" in refused.log()
        async with httpx.AsyncClient(base_url=serving.url, timeout=10) as http:
            assert (await scrape(http))("salesreport_sales_stored_total") == 1
    finally:
        first.kill_all()
        second.kill_all()
