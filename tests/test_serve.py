"""``serve``: HTTPS with --tls-cert/--tls-key, its argument errors, and how SIGTERM reaches the drain.

The TLS tests start ``python -m salesreport serve`` as production would, with a
self-signed certificate made by the ``openssl`` command line, on a SQLite
database migrated with ``python -m salesreport migrate``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import structlog
import uvloop

from salesreport import drain
from tests import pg
from tests.conftest import ROOT
from tests.test_faults import Server, cli
from tests.test_metrics import Scrape

OPENSSL = shutil.which("openssl")


def make_certificate(directory: Path, name: str) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its private key: (cert.pem, key.pem)."""
    if OPENSSL is None:
        if os.environ.get("CI") == "true":
            pytest.fail("the openssl command line is needed to make a test certificate")
        pytest.skip("the openssl command line is needed to make a test certificate")
    cert, key = directory / f"{name}-cert.pem", directory / f"{name}-key.pem"
    subprocess.run(
        [
            *(OPENSSL, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2"),
            *("-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"),
            *("-keyout", str(key), "-out", str(cert)),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return cert, key


@pytest.fixture
def tls(tmp_path: Path) -> tuple[Path, Path]:
    return make_certificate(tmp_path, "server")


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'sales.db'}"
    done = cli(url, "migrate")
    assert done.returncode == 0, done.stderr
    return url


@contextlib.contextmanager
def serving(database_url: str, tmp_path: Path, *args: str) -> Iterator[Server]:
    """``python -m salesreport serve --port <free> *args``; the whole process group is gone on the way out."""
    port = pg.free_port()
    log_path = tmp_path / "server.log"
    env = {**os.environ, "DATABASE_URL": database_url, "SALESREPORT_LOG_FORMAT": "json"}
    with log_path.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "salesreport", "serve", "--port", str(port), *args],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = Server(proc, port, log_path)
    try:
        yield server
    finally:
        if server.group_alive():
            server.kill()


def wait_live(server: Server, url: str, verify: ssl.SSLContext, within: float = 20) -> httpx.Response:
    """Poll ``url`` until it answers at all (any status), or fail after ``within`` seconds."""
    deadline = time.monotonic() + within
    last: Exception | None = None
    with httpx.Client(verify=verify, timeout=2) as http:
        while time.monotonic() < deadline:
            assert server.proc.poll() is None, f"the server exited with {server.proc.returncode}:\n{server.log()}"
            try:
                return http.get(url)
            except httpx.TransportError as exc:
                last = exc
            time.sleep(0.1)
    raise AssertionError(f"{url} did not answer within {within} s (last: {last!r}):\n{server.log()}")


def plain_http(port: int) -> bytes:
    """Everything the server sends back to a plain-HTTP request, until it closes or is silent for 5 s."""
    received = b""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"GET /health/live HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        with contextlib.suppress(ConnectionResetError, TimeoutError):
            while chunk := sock.recv(4096):
                received += chunk
    return received


# --- HTTPS ---------------------------------------------------------------------------------


def test_serves_https_only_with_tls_cert_and_key(sqlite_url: str, tls: tuple[Path, Path], tmp_path: Path) -> None:
    cert, key = tls
    with serving(sqlite_url, tmp_path, "--tls-cert", str(cert), "--tls-key", str(key)) as server:
        trust = ssl.create_default_context(cafile=str(cert))
        live = wait_live(server, f"https://127.0.0.1:{server.port}/health/live", trust)
        assert (live.status_code, live.json()) == (200, {"status": "ok"})
        assert live.url.scheme == "https"

        # Plain HTTP on the same port gets no HTTP answer: at most a TLS alert, then the connection closes.
        answer = plain_http(server.port)
        assert not answer.startswith(b"HTTP/"), answer[:200]
        assert b"status" not in answer, answer[:200]
        with pytest.raises(httpx.TransportError):
            httpx.get(f"http://127.0.0.1:{server.port}/health/live", timeout=5)
        # Nor does a client that does not trust the certificate.
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            httpx.get(f"https://127.0.0.1:{server.port}/health/live", timeout=5)

        # SIGTERM still drains (drain.install under the real Granian) and the server exits with 0.
        server.proc.send_signal(signal.SIGTERM)
        try:
            code = server.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the server did not exit within 15 s of SIGTERM:\n{server.log()}")
        log = server.log(200)
        assert code == 0, log
        assert "draining before shutdown" in log, log
        assert "without a drain" not in log, log
        assert "setup plugin" not in log, log  # alembic's plugins, named as each worker reads the revision


# --- argument errors -----------------------------------------------------------------------


def serve_error(sqlite_url: str, tmp_path: Path, *args: str) -> str:
    """Run serve with ``args``, which must make it exit with 2 before it serves; returns its output."""
    with serving(sqlite_url, tmp_path, *args) as server:
        try:
            code = server.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pytest.fail(f"serve {' '.join(args)} did not exit:\n{server.log()}")
        output = server.log()
    assert code == 2, output
    assert "Starting granian" not in output, output
    return output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        pytest.param(["--tls-cert", "{cert}"], "--tls-cert and --tls-key go together", id="only-cert"),
        pytest.param(["--tls-key", "{key}"], "--tls-cert and --tls-key go together", id="only-key"),
        pytest.param(
            ["--tls-cert", "{dir}/nope.pem", "--tls-key", "{key}"],
            "cannot read --tls-cert {dir}/nope.pem: No such file or directory",
            id="missing-cert",
        ),
        pytest.param(
            ["--tls-cert", "{cert}", "--tls-key", "{dir}/nope.pem"],
            "cannot read --tls-key {dir}/nope.pem: No such file or directory",
            id="missing-key",
        ),
        # A directory cannot be read as a file, even by root (for whom file modes do not count).
        pytest.param(["--tls-cert", "{dir}", "--tls-key", "{key}"], "cannot read --tls-cert {dir}: ", id="unreadable"),
        pytest.param(
            ["--tls-cert", "{key}", "--tls-key", "{key}"],
            "are not a PEM certificate and its unencrypted private key",
            id="not-a-cert",
        ),
    ],
)
def test_tls_argument_errors_exit_2(
    args: list[str], message: str, sqlite_url: str, tls: tuple[Path, Path], tmp_path: Path
) -> None:
    names = {"cert": tls[0], "key": tls[1], "dir": tmp_path}
    output = serve_error(sqlite_url, tmp_path, *(arg.format(**names) for arg in args))
    assert message.format(**names) in output, output


def test_a_key_of_another_certificate_exits_2(sqlite_url: str, tls: tuple[Path, Path], tmp_path: Path) -> None:
    cert, _ = tls
    _, other_key = make_certificate(tmp_path, "other")
    output = serve_error(sqlite_url, tmp_path, "--tls-cert", str(cert), "--tls-key", str(other_key))
    assert f"--tls-key {other_key} is not the private key of --tls-cert {cert}" in output, output


# --- how SIGTERM reaches the drain (drain.install), in-process ------------------------------


@dataclass(frozen=True)
class DrainSettings:
    drain_seconds: float


@dataclass
class Svc:
    settings: DrainSettings
    draining: bool = False
    woken: int = 0

    def wake(self) -> None:
        self.woken += 1


async def until(condition: Callable[[], bool], within: float = 5) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, f"not true within {within} s"
        await asyncio.sleep(0.01)


# asyncio's own loop, and uvloop (the one ``serve`` runs): each hands ``signal`` a dispatcher of its own.
LOOPS = [pytest.param(asyncio.new_event_loop, id="asyncio"), pytest.param(uvloop.new_event_loop, id="uvloop")]


def run_with_server_handlers(
    new_loop: Callable[[], asyncio.AbstractEventLoop],
    sigterm: bool,
    sigint: bool,
    test: Callable[[list[float]], Coroutine[Any, Any, None]],
) -> None:
    """Run the coroutine function ``test`` on a fresh loop where a stand-in "server" handles the given signals.

    As a Granian 2.8 worker does (granian/_signals.py, set_loop_signals), one handler on the loop; it
    records when it ran.
    """
    stops: list[float] = []
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    loop = new_loop()
    try:
        for sig, handled in ((signal.SIGTERM, sigterm), (signal.SIGINT, sigint)):
            if handled:
                loop.add_signal_handler(sig, lambda: stops.append(time.monotonic()))
        loop.run_until_complete(test(stops))
    finally:
        loop.close()
        for sig, handler in before.items():  # uvloop's close leaves its own dispatcher in place
            signal.signal(sig, handler)


@pytest.mark.parametrize("new_loop", LOOPS)
def test_sigterm_drains_then_runs_the_servers_handler(new_loop: Callable[[], asyncio.AbstractEventLoop]) -> None:
    async def test(stops: list[float]) -> None:
        svc = Svc(DrainSettings(drain_seconds=0.3))
        restore = drain.install(svc)
        termed = time.monotonic()
        signal.raise_signal(signal.SIGTERM)
        await until(lambda: svc.draining)
        assert svc.woken == 1  # the requests that wait for news answer now
        assert not stops, "the server's handler ran before the drain"
        await until(lambda: bool(stops))
        assert stops[0] - termed >= 0.29
        # A second SIGTERM during the shutdown does not start another drain.
        signal.raise_signal(signal.SIGTERM)
        await asyncio.sleep(0.4)
        assert len(stops) == 1
        # After restore(), SIGTERM runs the server's handler at once, as before install().
        restore()
        signal.raise_signal(signal.SIGTERM)
        await until(lambda: len(stops) == 2, within=0.25)

    run_with_server_handlers(new_loop, sigterm=True, sigint=True, test=test)


@pytest.mark.parametrize("new_loop", LOOPS)
def test_no_drain_and_a_warning_where_sigint_is_not_the_servers_handler(
    new_loop: Callable[[], asyncio.AbstractEventLoop], monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = structlog.testing.CapturingLogger()
    monkeypatch.setattr(drain, "log", calls)

    async def test(stops: list[float]) -> None:
        svc = Svc(DrainSettings(drain_seconds=5))
        restore = drain.install(svc)
        signal.raise_signal(signal.SIGTERM)
        await until(lambda: bool(stops), within=1)
        assert not svc.draining
        restore()

    run_with_server_handlers(new_loop, sigterm=True, sigint=False, test=test)
    assert [call.method_name for call in calls.calls] == ["warning"]
    assert "without a drain" in calls.calls[0].args[0]


@pytest.mark.parametrize("new_loop", LOOPS)
def test_nothing_changes_where_no_server_handles_sigterm(new_loop: Callable[[], asyncio.AbstractEventLoop]) -> None:
    async def test(stops: list[float]) -> None:
        restore = drain.install(Svc(DrainSettings(drain_seconds=0.1)))
        assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
        restore()
        assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL

    run_with_server_handlers(new_loop, sigterm=False, sigint=False, test=test)


def test_a_port_in_use_is_refused_even_by_a_reuseport_listener(sqlite_url: str, tmp_path: Path) -> None:
    """Granian binds with SO_REUSEPORT: without a check, a second server would share the port's traffic."""
    with socket.socket() as other:
        other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        env = {**os.environ, "DATABASE_URL": sqlite_url}
        done = subprocess.run(
            [sys.executable, "-m", "salesreport", "serve", "--port", str(port)],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert done.returncode == 2, done.stderr
    assert "address is in use" in done.stderr


@pytest.mark.parametrize("args", [["--port", "70000"], ["--port", "0"], ["--workers", "0"], ["--workers", "x"]])
def test_serve_arguments_out_of_range_are_refused(sqlite_url: str, args: list[str]) -> None:
    done = cli(sqlite_url, "serve", *args)
    assert done.returncode == 2
    assert "must be between" in done.stderr or "not an integer" in done.stderr


def test_serves_on_a_host_name(sqlite_url: str, tmp_path: Path) -> None:
    """Granian takes IP addresses only: a name such as localhost is resolved first."""
    with serving(sqlite_url, tmp_path, "--host", "localhost") as server:
        response = wait_live(server, f"http://127.0.0.1:{server.port}/health/live", ssl.create_default_context())
        assert response.status_code == 200


def _responses(sock: socket.socket, count: int, within: float = 20) -> list[tuple[int, bytes]]:
    """``count`` HTTP/1.1 responses read from ``sock`` (status and body, framed by Content-Length)."""
    received = b""
    answers: list[tuple[int, bytes]] = []
    deadline = time.monotonic() + within
    while len(answers) < count:
        head_end = received.find(b"\r\n\r\n")
        if head_end >= 0:
            head = received[:head_end].decode("latin-1").split("\r\n")
            length = next(int(line.split(":", 1)[1]) for line in head if line.lower().startswith("content-length:"))
            if len(received) >= head_end + 4 + length:
                answers.append((int(head[0].split()[1]), received[head_end + 4 : head_end + 4 + length]))
                received = received[head_end + 4 + length :]
                continue
        assert time.monotonic() < deadline, f"{len(answers)} of {count} responses within {within} s: {received!r}"
        chunk = sock.recv(65536)
        assert chunk, f"the server closed the connection after {len(answers)} of {count} responses"
        received += chunk
    return answers


def _post(body: bytes) -> bytes:
    return (
        b"POST /sales HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )


def test_bodies_read_to_their_length_keep_the_connection_and_its_next_requests(sqlite_url: str, tmp_path: Path) -> None:
    """A body is complete at its Content-Length (``receive_body`` stops there, see its docstring): on one
    connection through Granian, a body sent in two pieces, then two requests sent in one write, are
    each answered in order, and the connection stays open."""
    assert cli(sqlite_url, "demo", "--sales", "0", "--stores", "2", "--products", "2").returncode == 0
    with serving(sqlite_url, tmp_path) as server:
        wait_live(server, f"http://127.0.0.1:{server.port}/health/live", ssl.create_default_context())
        sales = [b'{"store_id": 1, "product_id": %d, "quantity": %d}' % (1 + n % 2, n + 1) for n in range(3)]
        with socket.create_connection(("127.0.0.1", server.port), timeout=20) as sock:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            first = _post(sales[0])
            sock.sendall(first[:-5])  # the body's end in a second write
            sock.sendall(first[-5:])
            sock.sendall(_post(sales[1]) + _post(sales[2]))
            answers = _responses(sock, 3)
    assert [status for status, _ in answers] == [201, 201, 201]
    assert [json.loads(body)["quantity"] for _, body in answers] == [1, 2, 3]


def test_a_malformed_chunk_is_a_400_and_no_unhandled_error(sqlite_url: str, tmp_path: Path) -> None:
    """A chunked body that Granian cannot frame ends for the app as a disconnect: the client's fault, and
    it still reads the answer, a 400 (a 500, logged as an unhandled error, before)."""
    assert cli(sqlite_url, "demo", "--sales", "0", "--stores", "2", "--products", "2").returncode == 0
    with serving(sqlite_url, tmp_path) as server:
        wait_live(server, f"http://127.0.0.1:{server.port}/health/live", ssl.create_default_context())
        body = b'{"store_id": 1, "product_id": 1}'
        with socket.create_connection(("127.0.0.1", server.port), timeout=20) as sock:
            sock.sendall(
                b"POST /sales HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                b"Transfer-Encoding: chunked\r\n\r\nzz\r\n" + body + b"\r\n0\r\n\r\n"
            )
            [(status, answer)] = _responses(sock, 1)
    assert status == 400, answer
    assert json.loads(answer)["title"] == "Bad Request"
    assert "unhandled error" not in server.log(10_000)


def test_a_held_poll_ends_when_its_connection_closes(sqlite_url: str, tmp_path: Path) -> None:
    """Through Granian, a dashboard's held poll whose connection closes is answered (its access-log
    line written) at once, not when its 20 s are up."""
    from salesreport.web.pages import LIVE_WAIT_S

    assert cli(sqlite_url, "demo", "--sales", "0", "--stores", "2", "--products", "2").returncode == 0
    with serving(sqlite_url, tmp_path) as server:
        url = f"http://127.0.0.1:{server.port}"
        wait_live(server, f"{url}/health/live", ssl.create_default_context())
        tag = httpx.get(f"{url}/?month=2026-06&fragment=1", timeout=20).headers["etag"]
        held = (
            "GET /?month=2026-06&fragment=1&wait=1 HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"If-None-Match: {tag}\r\nX-Request-ID: held-poll\r\n\r\n"
        )
        with socket.create_connection(("127.0.0.1", server.port), timeout=20) as sock:
            sock.sendall(held.encode())
            # A request whose connection closes before the server starts it is never started (so never
            # logged): close it once the poll is held.
            assert held_polls(url, lambda n: n == 1), f"the poll was never held:\n{server.log()}"
        closed = time.monotonic()
        line = None
        while line is None and time.monotonic() < closed + LIVE_WAIT_S / 2:
            lines = [json.loads(text) for text in server.log_path.read_text().splitlines() if "held-poll" in text]
            line = next((entry for entry in lines if entry.get("request_id") == "held-poll"), None)
            if line is None:
                time.sleep(0.05)  # polling the log, with the deadline above
        assert line is not None, f"the poll was not ended within {LIVE_WAIT_S / 2:g} s of its close:\n{server.log()}"
        assert held_polls(url, lambda n: n == 0), "the poll ended is still counted as held"
    assert line["status"] == 304


def held_polls(url: str, wanted: Callable[[float], bool], within: float = 10) -> bool:
    """Whether ``salesreport_live_polls_held`` on ``url``'s metrics comes to a value ``wanted`` accepts
    within ``within`` seconds."""
    deadline = time.monotonic() + within
    while True:
        with contextlib.suppress(httpx.TransportError):
            if wanted(Scrape(httpx.get(f"{url}/metrics", timeout=5).text)("salesreport_live_polls_held")):
                return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)  # polling the metrics, with the deadline above


def _children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (Linux: from /proc)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                stat = Path(f"/proc/{entry}/stat").read_text()
                if int(stat.rpartition(")")[2].split()[1]) == pid:
                    found.append(int(entry))
    return found


def test_a_worker_killed_is_started_again_and_the_metrics_stay_right(sqlite_url: str, tmp_path: Path) -> None:
    """A worker that dies (SIGKILL: the kernel's OOM killer) is started again; the server goes on, its
    counters keep what the dead worker counted, and its pools are not counted twice."""
    assert cli(sqlite_url, "demo", "--sales", "0", "--stores", "2", "--products", "2").returncode == 0
    with serving(sqlite_url, tmp_path) as server:
        url = f"http://127.0.0.1:{server.port}"
        wait_live(server, f"{url}/health/live", ssl.create_default_context())
        sale = {"product_id": 1, "store_id": 1}
        assert httpx.post(f"{url}/sales", json=sale, timeout=10).status_code == 201
        before = Scrape(httpx.get(f"{url}/metrics", timeout=5).text)
        assert before("salesreport_sales_stored_total") == 1
        [worker] = _children(server.proc.pid)
        os.kill(worker, signal.SIGKILL)
        deadline = time.monotonic() + 20
        while not (others := [pid for pid in _children(server.proc.pid) if pid != worker]):
            assert server.proc.poll() is None, f"the server exited with {server.proc.returncode}:\n{server.log()}"
            assert time.monotonic() < deadline, f"no worker was started again:\n{server.log()}"
            time.sleep(0.05)  # polling the processes, with the deadline above
        assert len(others) == 1
        assert wait_live(server, f"{url}/health/live", ssl.create_default_context()).status_code == 200
        assert httpx.post(f"{url}/sales", json=sale, timeout=10).status_code == 201
        after = Scrape(httpx.get(f"{url}/metrics", timeout=5).text)
        assert after("salesreport_sales_stored_total") == 2
        for pool in ("reader", "writer"):
            assert after("salesreport_db_pool_size", pool=pool) == before("salesreport_db_pool_size", pool=pool)
        assert server.proc.poll() is None
