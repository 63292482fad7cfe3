"""Faults under load, on the real server: kill -9, a database restart, SIGTERM.

Each test starts ``python -m salesreport serve`` as production would, drives it
with ``tests.loadclient.Load`` (32 POS terminals posting sales with idempotency
keys), injects the fault mid-load, and then checks what the issue promises:
every acknowledged sale stored exactly once, nothing stored twice, the rollups
equal to the raw sales (``python -m salesreport check``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import sqlalchemy as sa

from salesreport import config, db
from tests import pg
from tests.conftest import ROOT
from tests.loadclient import PRODUCTS_CSV, SENT, STORES_CSV, Attempt, Load

pytestmark = pytest.mark.anyio

T = TypeVar("T")
ANSWERS = {200, 201, 503}  # what a POST of valid sales may get under faults


# --- the server as a subprocess ------------------------------------------------------------


def cli(database_url: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DATABASE_URL": database_url}
    return subprocess.run(
        [sys.executable, "-m", "salesreport", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    port: int
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self, lines: int = 40) -> str:
        text = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    def group_alive(self) -> bool:
        """Whether any process of the server's session (main process or worker) is still running."""
        try:
            os.killpg(self.proc.pid, 0)
        except ProcessLookupError:
            return False
        return True

    def kill(self) -> None:
        """SIGKILL the main process and every worker at once."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)


@dataclass
class Servers:
    database_url: str
    workers: int
    tmp_path: Path
    port: int = field(default_factory=pg.free_port)
    env: dict[str, str] = field(default_factory=dict)
    started: list[Server] = field(default_factory=list)

    def start(self) -> Server:
        """Start the server on ``port`` (the same one on every restart, as a POS client knows one address)."""
        log_path = self.tmp_path / f"server-{len(self.started)}.log"
        env = {**os.environ, "DATABASE_URL": self.database_url, "SALESREPORT_LOG_FORMAT": "json", **self.env}
        argv = [sys.executable, "-m", "salesreport", "serve", "--host", "127.0.0.1", "--port", str(self.port)]
        with log_path.open("wb") as out:
            proc = subprocess.Popen(
                [*argv, "--workers", str(self.workers)],
                cwd=ROOT,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        server = Server(proc, self.port, log_path)
        self.started.append(server)
        return server

    async def start_ready(self) -> Server:
        server = self.start()
        await wait_ready(server)
        return server

    def kill_all(self) -> None:
        for server in self.started:
            if server.group_alive():
                server.kill()


async def wait_ready(server: Server, within: float = 20) -> float:
    """Poll ``GET /health/ready`` until 200; returns the seconds it took."""
    started = time.monotonic()
    async with httpx.AsyncClient(base_url=server.url, timeout=2) as http:
        while time.monotonic() - started < within:
            assert server.proc.poll() is None, f"the server exited with {server.proc.returncode}:\n{server.log()}"
            with contextlib.suppress(httpx.TransportError):
                if (await http.get("/health/ready")).status_code == 200:
                    return time.monotonic() - started
            await asyncio.sleep(0.1)
    raise AssertionError(f"the server was not ready after {within} s:\n{server.log()}")


@pytest.fixture
def catalog(database_url: str, tmp_path: Path) -> str:
    """The migrated database with the load client's products and stores, imported with the CLI."""
    (tmp_path / "p.csv").write_text(PRODUCTS_CSV, encoding="utf-8")
    (tmp_path / "s.csv").write_text(STORES_CSV, encoding="utf-8")
    done = cli(database_url, "import", "--products", str(tmp_path / "p.csv"), "--stores", str(tmp_path / "s.csv"))
    assert done.returncode == 0, done.stderr
    return database_url


@pytest.fixture
def servers(catalog: str, tmp_path: Path) -> Iterator[Servers]:
    # SQLite has one writer: the CLI would serve it with 1 worker anyway.
    workers = 1 if catalog.startswith("sqlite") else 2
    servers = Servers(catalog, workers, tmp_path)
    try:
        yield servers
    finally:
        servers.kill_all()


@contextlib.asynccontextmanager
async def loading(load: Load) -> AsyncIterator[asyncio.Task[None]]:
    """Run ``load`` in the background; stop it and wait for its last answers on the way out."""
    task = asyncio.create_task(load.run())
    try:
        yield task
    finally:
        load.stop.set()
        await asyncio.wait_for(task, timeout=load.timeout + 5)


# --- what the database holds -----------------------------------------------------------------


async def stored_sales(settings: config.Settings) -> dict[tuple[int, str], list[Any]]:
    """Every stored sale with an idempotency key, by (store, key): a list, so that duplicates show."""
    database = db.connect(settings)
    try:
        async with database.reader.connect() as conn:
            result = await conn.execute(sa.select(db.sales))
            rows: dict[tuple[int, str], list[Any]] = {}
            for row in result:
                rows.setdefault((row.store_id, row.idempotency_key), []).append(row)
            return rows
    finally:
        await database.dispose()


def assert_stored_exactly_once(load: Load, stored: dict[tuple[int, str], list[Any]], *, all_sent: bool) -> None:
    """Every acknowledged sale is stored once, as acknowledged; no key is stored twice or unsent.

    With ``all_sent``, every sale the client sent must be stored (it was retried until acknowledged).
    """
    sent = load.keys()
    twice = {key: len(rows) for key, rows in stored.items() if len(rows) != 1}
    assert not twice, f"stored more than once: {sorted(twice.items())[:10]}"
    assert set(stored) <= sent, f"stored but never sent: {sorted(set(stored) - sent)[:10]}"
    missing = load.acknowledged_keys() - set(stored)
    assert not missing, f"{len(missing)} acknowledged sales are not stored: {sorted(missing)[:10]}"
    for post in load.posts:
        if post.stored is None:
            continue
        for sale, answer in zip(post.sales, post.stored, strict=True):
            (row,) = stored[(sale["store_id"], sale["idempotency_key"])]
            assert (row.id, row.product_id, row.quantity) == (answer["id"], sale["product_id"], sale["quantity"])
    if all_sent:
        assert set(stored) == sent, f"{len(sent - set(stored))} sent sales are not stored"
        assert sum(len(rows) for rows in stored.values()) == len(sent)


def assert_check_passes(database_url: str) -> None:
    done = cli(database_url, "check")
    assert done.returncode == 0, done.stdout + done.stderr


def assert_only(load: Load, allowed: set[int], attempts: list[Attempt] | None = None) -> None:
    attempts = load.attempts() if attempts is None else attempts
    odd = [a for a in attempts if a.status is not None and a.status not in allowed]
    assert not odd, f"unexpected statuses: {load.summary(odd)}; e.g. {odd[0]}"


def during(load: Load, start: float, end: float) -> list[Attempt]:
    """The attempts that overlapped [start, end]."""
    return [a for a in load.attempts() if a.started <= end and a.ended >= start]


def explain(
    attempts: list[Attempt],
    servers: Servers,
    t0: float,
    load: Load | None = None,
    stored: dict[tuple[int, str], list[Any]] | None = None,
) -> str:
    """Each attempt, its times relative to ``t0``, and what the server logged of it (by request id)."""
    logs = [line for server in servers.started for line in server.log_path.read_text(errors="replace").splitlines()]
    posts = {id(a): post for post in (load.posts if load else []) for a in post.attempts}
    lines = []
    for a in attempts[:5]:
        logged = [line for line in logs if f'"{a.request_id}"' in line]
        sent_at = a.event_time(SENT)
        post = posts.get(id(a))
        lines.append(
            f"  {a.request_id} ({'new' if a.new_connection else 'reused'} connection): "
            f"started {a.started - t0:+.3f} s, "
            + (f"sent {sent_at - t0:+.3f} s, " if sent_at is not None else "")
            + f"{a.error or a.status} {a.ended - t0:+.3f} s; keys {post.keys if post else '?'}"
            + (f" (stored: {[key in stored for key in post.keys]}); " if post and stored is not None else "; ")
            + f"server log: {logged or 'nothing'}"
        )
    return "\n".join(lines)


async def poll(probe: Callable[[], T | None], within: float) -> T | None:
    """``probe()`` every 0.1 s until it gives something, for at most ``within`` seconds."""
    deadline = time.monotonic() + within
    while True:
        found = probe()
        if found is not None or time.monotonic() >= deadline:
            return found
        await asyncio.sleep(0.1)


def first(attempts: list[Attempt], predicate: Callable[[Attempt], bool]) -> Attempt | None:
    return min((a for a in attempts if predicate(a)), key=lambda a: a.started, default=None)


async def under_way(load: Load, posts: int = 200, within: float = 30) -> int:
    """Wait until the server has acknowledged ``posts`` posts of ``load``: every terminal is busy, requests
    are in flight (instead of a fixed warm-up that a slow machine may not fill); returns how many sales."""
    found = await poll(lambda: True if sum(post.acknowledged for post in load.posts) >= posts else None, within)
    assert found, f"fewer than {posts} posts acknowledged after {within} s: {load.summary()}"
    return len(load.acknowledged_keys())


# --- the tests ------------------------------------------------------------------------------


async def test_kill_9_under_load_loses_and_doubles_nothing(
    servers: Servers, settings: config.Settings, database_url: str
) -> None:
    server = await servers.start_ready()
    async with Load(server.url, prefix="k9") as load:
        async with loading(load):
            acknowledged_before = await under_way(load)
            server.kill()
            killed = time.monotonic()
            server = await servers.start_ready()
            restarted = time.monotonic()
            # The load goes on against the new process for a while: until it acknowledged a sale...
            await poll(lambda: first(load.attempts(), lambda a: a.acknowledged and a.started >= killed), within=10)
            # ... and, on purpose, for at least 0.5 s after the restart (more load, not an event).
            await asyncio.sleep(max(0.0, restarted + 0.5 - time.monotonic()))
        assert acknowledged_before > 0, f"nothing acknowledged before the kill: {load.summary()}"
        after_kill = [a for a in load.attempts() if a.started >= killed]
        assert any(a.acknowledged for a in after_kill), f"nothing acknowledged after the restart: {load.summary()}"
        left = await load.retry_unacknowledged(deadline=time.monotonic() + 15)
        assert not left, f"{len(left)} posts never acknowledged: {load.show(left[0].attempts[-3:])}; {load.summary()}"
    assert_only(load, ANSWERS)
    print(f"\n{len(load.posts)} posts, {len(load.keys())} sales; attempts: {load.summary()}")
    stored = await stored_sales(settings)
    assert_stored_exactly_once(load, stored, all_sent=True)
    assert_check_passes(database_url)


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
async def test_database_restart_under_load(
    servers: Servers, settings: config.Settings, database_url: str, pg_cluster: pg.Cluster
) -> None:
    server = await servers.start_ready()
    async with Load(server.url, prefix="db", timeout=10) as load, httpx.AsyncClient(base_url=server.url) as probe:
        restarted = False
        try:
            async with loading(load):
                await under_way(load)
                await asyncio.to_thread(pg_cluster.stop, "immediate")
                stopped = time.monotonic()
                # The outage lasts until a request sent during it has been answered: the terminals first
                # wait out the Retry-After of the 503s they got as it began, so a fixed length may end
                # just before their next attempts. Then the readiness probe, still during the outage.
                await poll(lambda: first(load.attempts(), lambda a: a.started >= stopped), within=15)
                ready_when_down = await probe.get("/health/ready", timeout=10)
                outage_end = time.monotonic()
                await asyncio.to_thread(pg_cluster.start)
                restarted = True
                up = time.monotonic()
                recovered = await poll(
                    lambda: first(load.attempts(), lambda a: a.acknowledged and a.started >= up), within=10
                )
                await asyncio.sleep(0.5)  # on purpose: more load on the recovered service, not an event
        finally:
            if not restarted:  # the cluster is the whole session's: never leave it stopped
                pg_cluster.start()
        ready_when_up = await probe.get("/health/ready", timeout=10)
        assert server.proc.poll() is None, f"the server died with the database:\n{server.log()}"
        timeouts = [a for a in load.attempts() if a.timed_out]
        assert not timeouts, f"{len(timeouts)} requests hung: {load.show(timeouts[:3])}; {load.summary()}"
        assert_only(load, ANSWERS)
        # Started and ended while the database was down (one that ended later may have reached the database back).
        outage = [a for a in load.attempts() if stopped <= a.started and a.ended <= outage_end]
        assert outage, "no request during the outage"
        assert all(a.status == 503 or a.error for a in outage), f"during the outage: {load.summary(outage)}"
        refused = [a for a in load.attempts() if a.status == 503]
        assert all(a.retry_after and int(a.retry_after) >= 1 for a in refused), "a 503 without Retry-After"
        assert ready_when_down.status_code == 503, ready_when_down.text
        assert int(ready_when_down.headers["retry-after"]) >= 1
        assert recovered is not None, (
            f"no sale acknowledged within 10 s of the database's return: {load.summary()}\n{server.log()}"
        )
        assert ready_when_up.status_code == 200, ready_when_up.text
        print(
            f"\noutage: {load.summary(outage)}; "
            f"first acknowledgement {recovered.started - up:.2f} s after the database was back"
        )
        left = await load.retry_unacknowledged(deadline=time.monotonic() + 15)
        assert not left, f"{len(left)} posts never acknowledged: {load.show(left[0].attempts[-3:])}; {load.summary()}"
    assert_only(load, ANSWERS)
    stored = await stored_sales(settings)
    assert_stored_exactly_once(load, stored, all_sent=True)
    assert_check_passes(database_url)


class Unanswered(AssertionError):
    """A request was sent in full after SIGTERM and never answered."""


async def test_sigterm_under_load_answers_every_request(
    servers: Servers, settings: config.Settings, database_url: str
) -> None:
    # Batches wait 200 ms for company, so that SIGTERM finds requests queued for the writer, not only on the wire.
    servers.env["SALESREPORT_FLUSH_MS"] = "200"
    server = await servers.start_ready()
    async with Load(server.url, prefix="term") as load:
        async with loading(load):
            await under_way(load)
            server.proc.send_signal(signal.SIGTERM)
            termed = time.monotonic()
            try:
                code = await asyncio.to_thread(server.proc.wait, 10)
            except subprocess.TimeoutExpired:
                pytest.fail(f"the server did not exit within 10 s of SIGTERM:\n{server.log()}")
            exited = time.monotonic()
            # On purpose: the terminals go on for 0.3 s after the exit (a length of load, not an event).
            await asyncio.sleep(0.3)
        assert not server.group_alive(), "a worker outlived the server's main process"
    stored = await stored_sales(settings)
    assert code == 0, f"exit code {code}:\n{server.log()}"
    assert_only(load, ANSWERS)
    assert_stored_exactly_once(load, stored, all_sent=False)
    assert_check_passes(database_url)
    print(
        f"\nexited {exited - termed:.2f} s after SIGTERM; {len(load.posts)} posts; attempts: {load.summary()}; "
        f"during the drain: {load.summary(during(load, termed, exited))}"
    )
    # New requests during the drain are told to come back later.
    assert load.summary(during(load, termed, exited)).get("503", 0) > 0, load.summary()
    unanswered = [a for a in load.attempts() if a.unanswered]
    # Requests the server had before SIGTERM (sent in full before it) must all be answered: the drain.
    in_flight = [a for a in unanswered if (a.event_time(SENT) or 0) < termed]
    assert not in_flight, (
        f"{len(in_flight)} requests in flight at SIGTERM never answered ({load.summary()}); times from SIGTERM:\n"
        + explain(in_flight, servers, termed, load, stored)
    )
    # And those that arrived during the drain should get a 503, not a reset.
    if unanswered:
        raise Unanswered(
            f"{len(unanswered)} requests sent after SIGTERM and never answered ({load.summary()}); "
            "times from SIGTERM:\n" + explain(unanswered, servers, termed, load, stored)
        )
