"""The processes a benchmark run starts: a throwaway PostgreSQL, HTTP servers, pgbench."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests import pg  # noqa: E402

# Durable, as production: fsync and synchronous_commit stay on.
PG_SETTINGS = {
    "fsync": "on",
    "synchronous_commit": "on",
    "shared_buffers": "1GB",
    "max_connections": "300",
}
# What the server did during each run, for the report (``database_events``): logging only.
PG_LOG_SETTINGS = {
    "log_checkpoints": "on",
    "log_autovacuum_min_duration": "0",
    "log_line_prefix": "%m [%p] ",
    "log_timezone": "UTC",
}


def free_port() -> int:
    return int(pg.free_port())


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- PostgreSQL ----------------------------------------------------------------------


class Postgres(pg.Cluster):
    """tests/pg.py's cluster, started with production durability instead of fsync=off."""

    def configure(self) -> None:
        """Write PG_SETTINGS into postgresql.conf (not -c options, so that a reload keeps them quietly)."""
        settings = PG_SETTINGS | PG_LOG_SETTINGS
        lines = "".join(f"{name} = '{value}'\n" for name, value in settings.items())
        with (self.datadir / "postgresql.conf").open("a") as conf:
            conf.write(f"\n# bench/run.py\n{lines}")

    def start(self) -> None:
        self.run(
            str(self.bindir / "pg_ctl"),
            "-D", str(self.datadir),
            "-l", str(self.root / "log"),
            "-w", "-t", "120",
            "-o", f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1",
            "start",
        )  # fmt: skip

    def client(self, program: str, *args: str, database: str = "postgres") -> list[str]:
        """A command line for a client program (psql, pgbench) connecting to this cluster."""
        return [str(self.bindir / program), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", *args, database]

    def query(self, sql: str, database: str = "postgres") -> str:
        """Run SQL with psql; return its unaligned output."""
        done = subprocess.run(
            self.client("psql", "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-c", sql, database=database),
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"psql failed: {sql}\n{done.stderr}")
        return done.stdout.strip()

    def script(self, path: Path, database: str) -> str:
        """Run an SQL file with psql (client side, so \\copy reads local files)."""
        done = subprocess.run(
            self.client("psql", "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-f", str(path), database=database),
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"psql -f {path} failed:\n{done.stderr}")
        return done.stdout.strip()

    def version(self) -> str:
        return self.query("SHOW server_version")


@dataclass
class DatabaseEvent:
    """A checkpoint or an autovacuum/autoanalyze, from the server's log: what, and when (epoch seconds)."""

    what: str
    start: float
    end: float | None  # None: still under way when the log was read

    def overlaps(self, start: float, end: float) -> bool:
        return self.start < end and (self.end is None or self.end > start)


_LOG_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d+)?) UTC \[\d+\] LOG:  (.*)$")


# "automatic [aggressive ]vacuum[ to prevent wraparound] of table "db.schema.table": ..." (PostgreSQL 15).
_AUTOVACUUM = re.compile(
    r'automatic (?:aggressive )?(vacuum|analyze)(?: to prevent wraparound)? of table "([^".]+)\.([^"]+)"'
)


def database_events(log_text: str, database: str) -> list[DatabaseEvent]:
    """The checkpoints, and the autovacuum runs of ``database``'s tables, in a log written with
    ``PG_LOG_SETTINGS`` (messages in English, the cluster's default).

    A checkpoint is logged when it starts and when it completes; an autovacuum or autoanalyze
    once, when it ends, with its elapsed time on a continuation line.
    """
    events: list[DatabaseEvent] = []
    checkpoint: DatabaseEvent | None = None
    vacuum: tuple[str, float] | None = None  # (what, logged at), until its elapsed time is found
    for line in log_text.splitlines():
        if vacuum is not None and line.startswith("\t"):
            elapsed = re.search(r"elapsed: ([0-9.]+) s", line)
            if elapsed:
                what, at = vacuum
                events.append(DatabaseEvent(what, at - float(elapsed.group(1)), at))
                vacuum = None
            continue
        vacuum = None
        match = _LOG_LINE.match(line)
        if not match:
            continue
        at = datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S.%f").replace(tzinfo=UTC).timestamp()
        message = match.group(2)
        if message.startswith("checkpoint starting: "):
            checkpoint = DatabaseEvent(f"checkpoint ({message.removeprefix('checkpoint starting: ')})", at, None)
            events.append(checkpoint)
        elif message.startswith("checkpoint complete") and checkpoint is not None:
            checkpoint.end = at
            checkpoint = None
        elif (table := _AUTOVACUUM.match(message)) and table.group(2) == database:
            vacuum = (f"auto{table.group(1)} of {table.group(3)}", at)
    return events


def apt_install(package: str) -> bool:
    """Install a Debian package when running as root with apt-get (as .ci/run does); whether it was tried."""
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        return False
    log(f"{package} not found: installing it with apt-get")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(["apt-get", "install", "-y", "-qq", package], check=True, env=env, stdout=subprocess.DEVNULL)
    return True


def start_pgbouncer(cluster: Postgres, server_connections: int) -> pg.Bouncer:
    binary = pg.find_pgbouncer()
    if binary is None and apt_install("pgbouncer"):
        binary = pg.find_pgbouncer()
    if binary is None:
        raise SystemExit("no pgbouncer found: `sudo apt-get install pgbouncer`, or put it on PATH")
    return pg.start_bouncer(binary, cluster, pool_size=server_connections)


def pgbouncer_version() -> str:
    binary = pg.find_pgbouncer()
    out = subprocess.run([str(binary), "--version"], capture_output=True, text=True, check=False).stdout
    return out.split("\n", 1)[0].removeprefix("PgBouncer ").strip()


def start_postgres() -> Postgres:
    bindir = pg.find_bindir()
    if bindir is None and apt_install("postgresql"):
        bindir = pg.find_bindir()
    if bindir is None:
        raise SystemExit(
            "no PostgreSQL server binaries (initdb, pg_ctl) found: `sudo apt-get install postgresql`, "
            "or put their directory on PATH"
        )
    root = Path(tempfile.mkdtemp(prefix="salesreport-bench-pg-"))
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
    cluster = Postgres(bindir, root, pg.free_port())
    try:
        cluster.run(str(bindir / "initdb"), "-D", str(cluster.datadir), "-U", "postgres", "--auth=trust", "-E", "UTF8")
        cluster.configure()
        cluster.start()
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        raise
    return cluster


def stop_postgres(cluster: Postgres) -> None:
    pg.destroy(cluster)


# --- HTTP servers ----------------------------------------------------------------------


@dataclass
class Server:
    """A server started in its own session, so that it and its workers can be stopped together."""

    name: str
    proc: subprocess.Popen[bytes]
    port: int
    log_path: Path
    log_file: BinaryIO | None = field(repr=False, default=None)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def start_server(name: str, argv: list[str], port: int, env: dict[str, str], log_path: Path) -> Server:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    out = log_path.open("ab")
    proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    server = Server(name, proc, port, log_path, out)
    try:
        wait_ready(server)
    except BaseException:
        stop_server(server)
        raise
    return server


def wait_ready(server: Server, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise RuntimeError(f"{server.name} exited with {server.proc.returncode}; see {server.log_path}")
        with (
            contextlib.suppress(OSError, urllib.error.URLError),
            urllib.request.urlopen(server.url + "/health/ready", timeout=2) as answer,
        ):
            if answer.status == 200:
                return
        time.sleep(0.2)
    raise RuntimeError(f"{server.name} not ready after {timeout:.0f} s; see {server.log_path}")


def stop_server(server: Server, timeout: float = 30) -> None:
    """SIGINT (Granian stops its workers, which drain their batchers), then SIGKILL the session."""
    proc = server.proc
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            log(f"{server.name} did not stop in {timeout:.0f} s: killing it")
    # Whatever is left of the session it started (workers), by its process group id.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(5)
    if server.log_file is not None:
        server.log_file.close()
        server.log_file = None


def _parents() -> dict[int, int]:
    """Every process's parent, from /proc (one scan)."""
    parents = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # The command name may hold spaces and parentheses: the fields follow the last ')'.
        fields = stat[stat.rindex(")") + 2 :].split()
        parents[int(entry.name)] = int(fields[1])
    return parents


def children(pid: int) -> list[int]:
    """The direct children of a process (Granian's workers), from /proc."""
    return sorted(child for child, parent in _parents().items() if parent == pid)


def process_tree(pid: int) -> list[int]:
    """A process and all its descendants (Granian's main process, its workers and anything they run)."""
    parents = _parents()
    tree, frontier = [pid], [pid]
    while frontier:
        frontier = [child for child, parent in parents.items() if parent in frontier]
        tree += frontier
    return tree


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU used so far by a process tree (utime + stime of each, all threads included).

    A worker that exits between two readings takes its ticks with it: Granian only
    respawns crashed workers, which the server log shows.
    """
    ticks = 0
    for member in process_tree(pid):
        try:
            stat = Path(f"/proc/{member}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        ticks += int(fields[11]) + int(fields[12])  # utime, stime: fields 14 and 15 of proc(5)
    return ticks / CLOCK_TICKS


def rss_kib(pid: int) -> int | None:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    match = re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE)
    return int(match.group(1)) if match else None


# --- pgbench ---------------------------------------------------------------------------

# A table shaped like `sales`, in its own database.
PGBENCH_SCHEMA = """
CREATE TABLE sales (
    id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    store_id bigint NOT NULL,
    product_id bigint NOT NULL,
    quantity integer NOT NULL,
    unit_price bigint NOT NULL,
    amount bigint NOT NULL,
    sold_at timestamptz NOT NULL,
    received_at timestamptz NOT NULL,
    month integer NOT NULL,
    idempotency_key varchar(128),
    UNIQUE (store_id, idempotency_key)
)
"""

PGBENCH_SCRIPT = """\\set store random(1, 200)
\\set product random(1, 1000)
INSERT INTO sales (store_id, product_id, quantity, unit_price, amount, sold_at, received_at, month, idempotency_key)
VALUES (:store, :product, 1, 1234, 1234, now(), now(), 202601, :client_id || '-' || random());
"""


@dataclass
class PgbenchResult:
    clients: int
    threads: int
    duration: int
    tps: float
    transactions: int
    failed: int
    p50_ms: float | None
    p99_ms: float | None
    output: str


def run_pgbench(cluster: Postgres, workdir: Path, duration: int, clients: int, threads: int) -> PgbenchResult:
    """PostgreSQL's own rate of durable single-row INSERT transactions, from its C client, with
    ``clients`` connections (one for the single-connection reference, as many as wrk's for the ceiling)."""
    cluster.query("CREATE DATABASE ceiling")
    cluster.query(PGBENCH_SCHEMA, database="ceiling")
    script = workdir / "insert.sql"
    script.write_text(PGBENCH_SCRIPT)
    # Per client count, so that a second run does not read the first one's transactions.
    logs = workdir / f"pgbench-log-c{clients}"
    shutil.rmtree(logs, ignore_errors=True)
    logs.mkdir()
    argv = cluster.client(
        "pgbench", "-n", "-f", str(script), "-c", str(clients), "-j", str(threads), "-T", str(duration),
        "-l", f"--log-prefix={logs}/tx", database="ceiling",
    )  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, check=False, cwd=workdir)
    output = done.stdout + done.stderr
    if done.returncode != 0:
        raise RuntimeError(f"pgbench failed:\n{output}")
    tps = float(_search(r"^tps = ([0-9.]+)", output) or 0)
    transactions = int(_search(r"number of transactions actually processed: (\d+)", output) or 0)
    failed = int(_search(r"number of failed transactions: (\d+)", output) or 0)
    latencies = _pgbench_latencies(logs)
    p50 = p99 = None
    if len(latencies) >= 100:
        cuts = statistics.quantiles(latencies, n=100)
        p50, p99 = cuts[49] / 1000, cuts[98] / 1000
    cluster.query("DROP DATABASE ceiling")
    return PgbenchResult(clients, threads, duration, tps, transactions, failed, p50, p99, output)


def _search(pattern: str, text: str) -> str | None:
    match = re.search(pattern, text, re.MULTILINE)
    return match.group(1) if match else None


def _pgbench_latencies(logs: Path) -> list[int]:
    """Per-transaction latencies (µs) from pgbench -l: client tx latency script epoch µs."""
    latencies = []
    for path in logs.iterdir():
        for line in path.read_text().splitlines():
            fields = line.split()
            if len(fields) >= 3 and fields[2].isdigit():
                latencies.append(int(fields[2]))
    return latencies
