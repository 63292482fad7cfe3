"""``make bench``: the service under load on a throwaway PostgreSQL and on SQLite, written to BENCHMARKS.md.

One run, for each backend (--backend: both by default, PostgreSQL first):
1. PostgreSQL: starts a durable cluster (fsync and synchronous_commit on) in a temporary directory;
   SQLite: a file in a temporary directory. Migrates it and imports a catalog of 200 stores and
   1,000 products;
2. measures the references of the same run: on PostgreSQL pgbench's single-row INSERT rate from as
   many clients as wrk has connections and from one, and a bare ASGI no-op POST app (bench/noop.py)
   on the same Granian settings and workers (again after step 4: the ratios take both runs);
3. for each data size (PostgreSQL: 0 and 1M sales, 10M with --big; SQLite: 0, 1M with --big): loads
   history through the bulk path with the server stopped, vacuums (PostgreSQL), analyzes and
   checkpoints the database (every stage, loaded or not), starts ``python -m salesreport serve`` as
   production would, and drives it with wrk from 64 connections (POST of 1 and of 100 sales, the
   reports, the catalog), plus the reports, GET /stores and one-sale POSTs from one connection;
   every wrk run also records the CPU the server's process tree used;
4. optionally soaks the single-sale POST of the first backend on the last stage's server while
   sampling each worker's memory (--soak 300), then stops the service;
5. checks that every acknowledged sale was stored and that ``python -m salesreport check`` agrees;
6. writes BENCHMARKS.md (keeping its "## Notes" section) and removes everything it started.

Raw wrk, pgbench and server output is kept in bench/out/.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import os
import random
import re
import shlex
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn

import page
import report
import services
import wrkrun
from report import Backend, Run, Scenario, Soak, Stage, Verification
from services import Postgres, Server, log

from salesreport import demo
from tests import pg

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
OUT = BENCH / "out"
STORES = 200
PRODUCTS = 1000
ZONES = demo.ZONES
DATABASE = "salesreport"
BACKENDS = {"postgresql": "PostgreSQL", "sqlite": "SQLite"}


# What the GETs' clients send: a browser (Chromium) and Python's requests and httpx.
BROWSER = ("Accept-Encoding: gzip, deflate, br, zstd",)
API_CLIENT = ("Accept-Encoding: gzip, deflate",)


def scenarios() -> list[Scenario]:
    month = datetime.now(UTC).strftime("%Y-%m")
    return [
        Scenario("post-1", "POST /sales, 1 sale", "/sales", batch=1),
        Scenario("post-100", "POST /sales, 100 sales", "/sales", batch=100),
        Scenario(
            "top-stores",
            f"GET /reports/top-stores?month={month}",
            f"/reports/top-stores?month={month}",
            headers=API_CLIENT,
        ),
        Scenario("top-products", "GET /reports/top-products", "/reports/top-products", headers=API_CLIENT),
        Scenario("dashboard", f"GET /?month={month} (dashboard HTML)", f"/?month={month}", headers=BROWSER),
        Scenario("products", "GET /products", "/products", headers=API_CLIENT),
        Scenario("stores", "GET /stores", "/stores", headers=API_CLIENT),
    ]


# --- options -----------------------------------------------------------------------------


def parse_size(text: str) -> int:
    match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([kKmM]?)\s*", text)
    if not match:
        raise argparse.ArgumentTypeError(f"not a number of sales: {text!r} (examples: 0, 100000, 1M, 250k)")
    scale = {"": 1, "k": 1_000, "m": 1_000_000}[match.group(2).lower()]
    return int(float(match.group(1)) * scale)


def parse_sizes(text: str) -> list[int]:
    return [parse_size(part) for part in text.split(",") if part.strip()]


def options(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="bench/run.py",
        description="Benchmark the sales service on a throwaway PostgreSQL and on SQLite and write BENCHMARKS.md.",
    )
    p.add_argument("--duration", type=int, default=15, help="seconds per wrk run and for pgbench (default 15)")
    p.add_argument(
        "--sizes", type=parse_sizes, default=[0, 1_000_000], help="sales stored per PostgreSQL stage (default 0,1M)"
    )
    p.add_argument(
        "--big",
        action="store_true",
        help="add a 10M-sales PostgreSQL stage and a 1M SQLite one (loading takes several minutes)",
    )
    p.add_argument(
        "--backend",
        choices=["both", *BACKENDS],
        default="both",
        help="the databases to measure the service on (default both: PostgreSQL, then SQLite)",
    )
    p.add_argument(
        "--sqlite-sizes",
        type=parse_sizes,
        default=[0],
        help="sales stored per SQLite stage (default 0; --big adds 1M)",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=2,
        help="Granian workers for the service and no-op on PostgreSQL (default 2; SQLite serves with one)",
    )
    p.add_argument("--connections", type=int, default=64, help="wrk connections and pgbench clients (default 64)")
    p.add_argument("--threads", type=int, default=2, help="wrk threads and pgbench -j (default 2)")
    p.add_argument("--warmup", type=int, default=2, help="seconds of GET /products before each stage (default 2)")
    p.add_argument("--soak", type=int, default=0, metavar="SECONDS", help="single-sale POST soak (0: skip)")
    p.add_argument("--soak-interval", type=float, default=5.0, metavar="SECONDS", help="RSS sampling period")
    p.add_argument(
        "--pgbouncer",
        type=int,
        nargs="?",
        const=20,
        default=0,
        metavar="SERVER_CONNECTIONS",
        help="serve through PgBouncer in transaction pooling mode with this many server connections (default 20): "
        "the service, migrate, import and check get its URL; the ceilings and the count of stored sales stay direct",
    )
    p.add_argument("--output", type=Path, default=ROOT / "BENCHMARKS.md", help="default: BENCHMARKS.md")
    args = p.parse_args(argv)
    args.sizes = sorted(set(args.sizes) | ({10_000_000} if args.big else set()))
    args.sqlite_sizes = sorted(set(args.sqlite_sizes) | ({1_000_000} if args.big else set()))
    args.backends = list(BACKENDS) if args.backend == "both" else [args.backend]
    if args.duration < 1 or args.connections < 1 or args.threads < 1 or args.workers < 1:
        p.error("--duration, --connections, --threads and --workers must be positive")
    return args


def command_line(argv: list[str]) -> str:
    return "make bench" + (f" BENCH_ARGS={shlex.quote(shlex.join(argv))}" if argv else "")


# --- the catalog ---------------------------------------------------------------------------


def write_catalog(workdir: Path) -> tuple[Path, Path]:
    """200 stores across several time zones and 1,000 products with prices like 12.34."""
    rng = random.Random(42)
    stores = workdir / "stores.csv"
    with stores.open("w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["id", "address", "timezone"])
        for i in range(1, STORES + 1):
            out.writerow([i, f"{rng.randint(1, 300)} Benchmark st., store {i}", ZONES[i % len(ZONES)]])
    products = workdir / "products.csv"
    with products.open("w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["id", "name", "price"])
        for i in range(1, PRODUCTS + 1):
            cents = rng.randint(30, 500_00)
            out.writerow([i, f"Product {i}", f"{cents // 100}.{cents % 100:02d}"])
    return products, stores


# --- the run -----------------------------------------------------------------------------


@dataclass
class Bench:
    args: argparse.Namespace
    workdir: Path
    kind: str = "postgresql"  # the backend being measured: a key of BACKENDS
    cluster: Postgres | None = None
    bouncer: pg.Bouncer | None = None
    server: Server | None = None
    products_csv: Path | None = None
    stores_csv: Path | None = None
    run_id: str = field(default_factory=lambda: f"b{int(time.time()):x}")
    post_runs: list[wrkrun.WrkResult] = field(default_factory=list)

    # -- plumbing

    @property
    def sqlite_file(self) -> Path:
        return self.workdir / "salesreport.db"

    @property
    def database_url(self) -> str:
        """What the service is given: a SQLite file, the cluster's URL, or PgBouncer's in front of it."""
        if self.kind == "sqlite":
            return f"sqlite+aiosqlite:///{self.sqlite_file}"
        assert self.cluster is not None
        return (self.bouncer or self.cluster).url(DATABASE)

    @property
    def workers(self) -> int:
        # serve runs one worker on SQLite (one writer): its no-op reference gets the same.
        return self.args.workers if self.kind == "postgresql" else 1

    @property
    def out_prefix(self) -> str:
        """Of the raw output files, so that the second backend does not overwrite the first one's."""
        return "" if self.kind == "postgresql" else f"{self.kind}-"

    @property
    def server_log(self) -> str:
        return f"{self.out_prefix}server.log"

    def env(self) -> dict[str, str]:
        return {**os.environ, "DATABASE_URL": self.database_url, "SALESREPORT_LOG_FORMAT": "json"}

    def salesreport(self, *args: str) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-m", "salesreport", *args]
        return subprocess.run(argv, cwd=ROOT, env=self.env(), capture_output=True, text=True, check=False)

    def must(self, done: subprocess.CompletedProcess[str]) -> str:
        if done.returncode != 0:
            raise RuntimeError(f"{shlex.join(map(str, done.args))} failed ({done.returncode}):\n{done.stderr}")
        return done.stdout

    def sqlite(self) -> sqlite3.Connection:
        # WAL: reading while the service writes is fine; the timeout covers a checkpoint in progress.
        return sqlite3.connect(self.sqlite_file, timeout=30)

    def sales_count(self) -> int:
        if self.kind == "sqlite":
            with contextlib.closing(self.sqlite()) as conn:
                return int(conn.execute("SELECT count(*) FROM sales").fetchone()[0])
        assert self.cluster is not None
        return int(self.cluster.query("SELECT count(*) FROM sales", DATABASE))

    # -- setup

    def setup(self) -> None:
        if self.kind == "postgresql":
            log("starting PostgreSQL (fsync=on, synchronous_commit=on, shared_buffers=1GB, max_connections=300)")
            self.cluster = services.start_postgres()
            self.cluster.query(f"CREATE DATABASE {DATABASE}")
            log(f"PostgreSQL {self.cluster.version()} on port {self.cluster.port}")
            if self.args.pgbouncer:
                self.bouncer = services.start_pgbouncer(self.cluster, self.args.pgbouncer)
                log(f"PgBouncer (transaction pooling, {self.args.pgbouncer} server connections) on {self.bouncer.port}")
        else:
            log(f"SQLite {sqlite3.sqlite_version}: {self.sqlite_file}")
        log("migrating")
        self.must(self.salesreport("migrate"))
        if self.products_csv is None or self.stores_csv is None:
            self.products_csv, self.stores_csv = write_catalog(self.workdir)
        out = self.must(
            self.salesreport("import", "--products", str(self.products_csv), "--stores", str(self.stores_csv))
        )
        log(out.strip())

    def database_description(self) -> str:
        if self.kind == "sqlite":
            return f"a SQLite {sqlite3.sqlite_version} file"
        assert self.cluster is not None
        via = f" through PgBouncer ({self.args.pgbouncer} server connections)" if self.bouncer else ""
        return f"PostgreSQL {self.cluster.version()}{via}"

    # -- servers

    def start_service(self) -> None:
        port = services.free_port()
        argv = [sys.executable, "-m", "salesreport", "serve", "--host", "127.0.0.1", "--port", str(port)]
        argv += ["--workers", str(self.workers)]
        log(f"starting the service: {' '.join(argv[1:])}")
        self.server = services.start_server("service", argv, port, self.env(), OUT / self.server_log)

    def stop_service(self) -> None:
        if self.server is not None:
            log("stopping the service")
            services.stop_server(self.server)
            self.server = None

    # -- references

    def pgbench_references(self) -> tuple[services.PgbenchResult | None, services.PgbenchResult | None]:
        """On PostgreSQL, pgbench from wrk's connections and from one."""
        a = self.args
        if self.kind != "postgresql":
            return None, None
        assert self.cluster is not None
        log(f"reference: pgbench single-row INSERT, {a.connections} clients, {a.duration} s")
        pgb = services.run_pgbench(self.cluster, self.workdir, a.duration, a.connections, a.threads)
        (OUT / "pgbench.txt").write_text(pgb.output)
        log(f"  {pgb.tps:,.0f} tps")
        log(f"reference: pgbench single-row INSERT, 1 client, {a.duration} s")
        pgb1 = services.run_pgbench(self.cluster, self.workdir, a.duration, 1, 1)
        (OUT / "pgbench-c1.txt").write_text(pgb1.output)
        log(f"  {pgb1.tps:,.0f} tps, p50 {pgb1.p50_ms or 0:.2f} ms, p99 {pgb1.p99_ms or 0:.2f} ms")
        return pgb, pgb1

    def noop_reference(self, name: str) -> wrkrun.WrkResult:
        """The no-op app's rate and CPU per request (measured before and after the service's runs)."""
        a = self.args
        port = services.free_port()
        argv = [sys.executable, str(BENCH / "noop.py"), "--port", str(port), "--workers", str(self.workers)]
        log(f"reference: no-op POST, bare ASGI on Granian, {self.workers} worker(s) ({name})")
        noop = services.start_server("no-op", argv, port, self.env(), OUT / f"{self.out_prefix}{name}.log")
        try:
            self.wrk(noop, f"{name}-warmup", path="/health/ready", duration=a.warmup)
            result = self.wrk(noop, name, path="/sales", batch=1, track=False)
        finally:
            services.stop_server(noop)
        log(f"  {summary(result)}")
        return result

    # -- wrk

    def wrk(
        self,
        server: Server,
        name: str,
        *,
        path: str,
        batch: int = 0,
        connections: int | None = None,
        threads: int | None = None,
        duration: int | None = None,
        track: bool = True,
        headers: tuple[str, ...] = (),
    ) -> wrkrun.WrkResult:
        """One wrk run, with the CPU the server's processes used during it; POST runs write their
        acknowledged requests for the final verification."""
        a = self.args
        if server.proc.poll() is not None:
            raise RuntimeError(f"{server.name} exited unexpectedly ({server.proc.returncode}); see {server.log_path}")
        prefix = f"{self.run_id}{len(self.post_runs)}x"
        acks = self.workdir / f"acks-{self.kind}-{len(self.post_runs)}.tsv" if batch and track else None
        cpu_before = services.cpu_seconds(server.proc.pid)
        started = time.time()
        result = wrkrun.run(
            server.url + path,
            duration=duration or a.duration,
            connections=connections or a.connections,
            threads=threads or a.threads,
            log_path=OUT / f"wrk-{self.out_prefix}{name}.txt",
            batch=batch,
            prefix=prefix,
            acks=acks,
            stores=STORES,
            products=PRODUCTS,
            headers=headers,
        )
        result.cpu_s = services.cpu_seconds(server.proc.pid) - cpu_before
        result.started, result.ended = started, time.time()
        if acks is not None:
            self.post_runs.append(result)
        return result

    # -- stages

    def load_history(self, count: int, seed: int) -> float:
        assert self.products_csv is not None
        assert self.stores_csv is not None
        log(f"loading {count:,} sales through store_history")
        started = time.perf_counter()
        argv = [sys.executable, str(BENCH / "loader.py"), "--sales", str(count), "--seed", str(seed)]
        argv += ["--products", str(self.products_csv), "--stores", str(self.stores_csv)]
        subprocess.run(argv, cwd=ROOT, env=self.env(), check=True)
        return time.perf_counter() - started

    def settle(self) -> None:
        """With the service stopped: statistics, vacuum and a checkpoint, so that every stage (and the
        no-op's second run) starts from the same state rather than with the writes of the runs before
        it still to vacuum and checkpoint."""
        assert self.server is None
        if self.kind == "sqlite":
            log("ANALYZE and a WAL checkpoint")
            with contextlib.closing(self.sqlite()) as conn:
                conn.execute("ANALYZE")
        self.quiet()

    def quiet(self) -> None:
        """What the runs before left to vacuum and to write back, done now (the service may run, idle),
        not while the next run is measured."""
        if self.kind == "postgresql":
            assert self.cluster is not None
            self.wait_for_autovacuum()
            log("VACUUM ANALYZE and CHECKPOINT")
            self.cluster.query("VACUUM ANALYZE", DATABASE)
        self.checkpoint()

    def checkpoint(self) -> None:
        """A checkpoint, done before it returns (the service may run): the WAL of the runs before is
        written back now, not while the next run is measured."""
        if self.kind == "sqlite":
            # Blocked past the busy timeout, it does not raise: it says so in its first column. A reader
            # of the service still on an older snapshot blocks it until its read ends: tried again.
            deadline = time.monotonic() + 60
            while True:
                with contextlib.closing(self.sqlite()) as conn:
                    busy, _, _ = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
                if not busy:
                    return
                if time.monotonic() > deadline:
                    raise RuntimeError("SQLite's WAL checkpoint was blocked by another connection for 60 s")
                time.sleep(0.2)
        else:
            assert self.cluster is not None
            self.cluster.query("CHECKPOINT", DATABASE)

    def wait_for_autovacuum(self, deadline_s: float = 600) -> None:
        """Let the autovacuum workers under way finish: a VACUUM would cancel them, and a cancelled
        autovacuum logs no line with its elapsed time, so the runs it overlapped would not list it."""
        assert self.cluster is not None
        deadline = time.monotonic() + deadline_s
        waited = False
        while (
            self.cluster.query("SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'autovacuum worker'") != "0"
        ):
            if time.monotonic() > deadline:
                log(f"autovacuum still running after {deadline_s:g} s: VACUUM will cancel it")
                return
            if not waited:
                log("waiting for the autovacuum under way to finish")
                waited = True
            time.sleep(0.5)

    def stage(self, size: int, index: int, all_scenarios: list[Scenario], reports: list[Scenario]) -> Stage:
        a = self.args
        missing = max(0, size - self.sales_count())
        load_seconds = 0.0
        self.stop_service()
        if missing:
            load_seconds = self.load_history(missing, seed=index + 3)
        self.settle()
        self.start_service()
        server = self.server
        assert server is not None
        url = server.url
        stage = Stage(size=size, loaded=missing, load_seconds=load_seconds)
        tag = report.size(size)
        if a.warmup:
            self.wrk(server, f"{tag}-warmup", path="/products", duration=a.warmup)
        stage.sales_at_start = self.sales_count()
        log(f"{BACKENDS[self.kind]} stage {tag}: {stage.sales_at_start:,} sales stored")
        # Reads first, so that they see the stage's size; then the POSTs, which add sales.
        for scenario in [s for s in all_scenarios if not s.is_post]:
            self.measure(stage, scenario)
        # GET /stores from one connection: the reports' p99 is compared with it.
        singles = [s for s in all_scenarios if s.key == "stores"]
        singles += [r for r in reports if not r.key.endswith("+50pages")]
        for rep in singles:
            one = self.wrk(server, f"{tag}-{rep.key}-c1", path=rep.path, connections=1, threads=1, headers=rep.headers)
            stage.single[rep.key] = one
            log(f"  {rep.title}, 1 connection: {summary(one)}")
        dashboard = next((s for s in all_scenarios if s.key == "dashboard"), None)
        if dashboard is not None:
            # The reports from one connection again, while 50 open dashboards poll their live figures.
            fragment = dashboard.path + "&fragment=1"
            for rep in [r for r in reports if r.key in ("top-stores", "top-products")]:
                with page.OpenPages(url, fragment) as pages:
                    one = self.wrk(
                        server,
                        f"{tag}-{rep.key}-c1-50pages",
                        path=rep.path,
                        connections=1,
                        threads=1,
                        headers=rep.headers,
                    )
                key = f"{rep.key}+50pages"
                stage.single[key] = one
                log(f"  {rep.title}, 1 connection, 50 dashboards open ({pages.requests} polls): {summary(one)}")
            drawn = stage.page = page.measure(url, dashboard.path)
            if drawn is not None:
                log(
                    f"  dashboard in Chromium: drawn in {drawn.median_ms:.0f} ms (median), "
                    f"{drawn.worst_ms:.0f} ms (worst of {len(drawn.drawn_ms)}), {drawn.bytes_loaded:,} bytes"
                )
        for scenario in [s for s in all_scenarios if s.is_post]:
            self.measure(stage, scenario)
        for scenario in [s for s in all_scenarios if s.key == "post-1"]:
            # What one till sees: each sale waits for its own commit, nothing to batch it with. It starts
            # as pgbench -c1 (its reference) does, on a quiet cluster: no vacuum of the tables the runs
            # before it wrote (autovacuum took 3-15 s of this 15 s run in earlier runs) and no checkpoint.
            self.quiet()
            one = self.wrk(server, f"{tag}-post-1-c1", path=scenario.path, batch=1, connections=1, threads=1)
            stage.single[scenario.key] = one
            log(f"  {scenario.title}, 1 connection: {summary(one)}")
        time.sleep(1)  # let the last batches commit
        stage.sales_at_end = self.sales_count()
        return stage

    def measure(self, stage: Stage, scenario: Scenario) -> None:
        assert self.server is not None
        name = f"{report.size(stage.size)}-{scenario.key}"
        result = self.wrk(self.server, name, path=scenario.path, batch=scenario.batch, headers=scenario.headers)
        stage.results[scenario.key] = result
        log(f"  {scenario.title}: {summary(result)}")

    # -- soak

    def soak(self) -> Soak:
        assert self.server is not None
        a = self.args
        log(f"soak: POST of one sale for {a.soak} s, sampling worker RSS every {a.soak_interval:g} s")
        main_pid = self.server.proc.pid
        samples: dict[str, list[tuple[float, int]]] = {}
        stop = threading.Event()

        def sample() -> None:
            started = time.monotonic()
            while not stop.is_set():
                t = time.monotonic() - started
                processes = [(f"main process ({main_pid})", main_pid)]
                processes += [(f"worker {pid}", pid) for pid in services.children(main_pid)]
                for label, pid in processes:
                    kib = services.rss_kib(pid)
                    if kib is not None:
                        samples.setdefault(label, []).append((t, kib))
                stop.wait(a.soak_interval)

        sampler = threading.Thread(target=sample, name="rss-sampler", daemon=True)
        sampler.start()
        try:
            result = self.wrk(self.server, "soak-post-1", path="/sales", batch=1, duration=a.soak)
        finally:
            stop.set()
            sampler.join()
        log(f"  {summary(result)}")
        return Soak(a.soak, a.soak_interval, result, samples)

    # -- verification

    def acked_file(self) -> Path:
        acked = self.workdir / f"acked-{self.kind}.tsv"
        with acked.open("wb") as out:
            for result in self.post_runs:
                if result.acks and result.acks.exists():
                    out.write(result.acks.read_bytes())
        return acked

    def verify(self) -> Verification:
        """Match the acknowledged requests (keys read back from 2xx answers) with the rows stored."""
        if self.kind == "sqlite":
            return self.verify_sqlite()
        assert self.cluster is not None
        acked = self.acked_file()
        sizes = sorted({r.sales_per_request for r in self.post_runs} or {1})
        sql = self.workdir / "verify.sql"
        sql.write_text(
            f"""
CREATE TEMP TABLE acked (rid text NOT NULL, n integer NOT NULL);
\\copy acked FROM '{acked}'
CREATE INDEX ON acked (rid);
CREATE TEMP TABLE stored AS
    SELECT split_part(idempotency_key, '.', 1) AS rid, count(*)::integer AS n
    FROM sales WHERE idempotency_key LIKE '{self.run_id}%' GROUP BY 1;
CREATE INDEX ON stored (rid);
ANALYZE acked;
ANALYZE stored;
SELECT
    (SELECT count(*) FROM acked),
    (SELECT coalesce(sum(n), 0) FROM acked),
    (SELECT count(*) - count(DISTINCT rid) FROM acked),
    (SELECT count(*) FROM stored),
    (SELECT coalesce(sum(n), 0) FROM stored),
    (SELECT coalesce(sum(greatest(a.n - coalesce(s.n, 0), 0)), 0) FROM acked a LEFT JOIN stored s USING (rid)),
    (SELECT count(*) FROM acked a LEFT JOIN stored s USING (rid) WHERE s.n IS DISTINCT FROM a.n),
    (SELECT count(*) FROM stored WHERE n NOT IN ({", ".join(map(str, sizes))})),
    (SELECT count(*) FROM stored s WHERE NOT EXISTS (SELECT 1 FROM acked a WHERE a.rid = s.rid)),
    (SELECT coalesce(sum(n), 0) FROM stored s WHERE NOT EXISTS (SELECT 1 FROM acked a WHERE a.rid = s.rid)),
    (SELECT count(*) FROM sales WHERE idempotency_key IS NULL),
    (SELECT count(*) FROM sales);
"""
        )
        values = [int(v) for v in self.cluster.script(sql, DATABASE).splitlines()[-1].split("|")]
        (acked_requests, acked_sales, duplicates, stored_requests, stored_sales, missing, mismatched, partial,
         unacked_requests, unacked_sales, history, total) = values  # fmt: skip
        return Verification(
            post_runs=len(self.post_runs),
            connections=self.args.connections,
            wrk_acked_requests=sum(r.ok for r in self.post_runs),
            acked_requests=acked_requests,
            acked_sales=acked_sales,
            duplicate_acks=duplicates,
            stored_requests=stored_requests,
            stored_sales=stored_sales,
            missing_sales=missing,
            mismatched_requests=mismatched,
            partial_requests=partial,
            unacked_requests=unacked_requests,
            unacked_sales=unacked_sales,
            history_sales=history,
            total_sales=total,
        )

    def verify_sqlite(self) -> Verification:
        """verify()'s matching, in Python: SQLite has none of the SQL it uses (split_part, \\copy...)."""
        acked: list[tuple[str, int]] = []
        for line in self.acked_file().read_text().splitlines():
            rid, _, n = line.partition("\t")
            if rid:
                acked.append((rid, int(n)))
        sizes = {r.sales_per_request for r in self.post_runs} or {1}
        with contextlib.closing(self.sqlite()) as conn:
            stored: dict[str, int] = dict(
                conn.execute(
                    "SELECT substr(idempotency_key, 1, instr(idempotency_key, '.') - 1), count(*) FROM sales "
                    "WHERE idempotency_key LIKE ? GROUP BY 1",
                    (f"{self.run_id}%",),
                ).fetchall()
            )
            history = int(conn.execute("SELECT count(*) FROM sales WHERE idempotency_key IS NULL").fetchone()[0])
            total = int(conn.execute("SELECT count(*) FROM sales").fetchone()[0])
        acked_rids = {rid for rid, _ in acked}
        unacked = [n for rid, n in stored.items() if rid not in acked_rids]
        return Verification(
            post_runs=len(self.post_runs),
            connections=self.args.connections,
            wrk_acked_requests=sum(r.ok for r in self.post_runs),
            acked_requests=len(acked),
            acked_sales=sum(n for _, n in acked),
            duplicate_acks=len(acked) - len(acked_rids),
            stored_requests=len(stored),
            stored_sales=sum(stored.values()),
            missing_sales=sum(max(n - stored.get(rid, 0), 0) for rid, n in acked),
            mismatched_requests=sum(1 for rid, n in acked if stored.get(rid) != n),
            partial_requests=sum(1 for n in stored.values() if n not in sizes),
            unacked_requests=len(unacked),
            unacked_sales=sum(unacked),
            history_sales=history,
            total_sales=total,
        )

    def check(self) -> tuple[int, str]:
        log("python -m salesreport check")
        done = self.salesreport("check")
        output = (done.stdout + done.stderr).strip()
        (OUT / f"{self.out_prefix}check.txt").write_text(output + "\n")
        return done.returncode, output

    # -- one backend

    def measure_backend(
        self, kind: str, sizes: list[int], all_scenarios: list[Scenario], reports: list[Scenario], soak: bool
    ) -> Backend:
        self.kind = kind
        self.post_runs = []
        self.setup()
        pgb, pgb1 = self.pgbench_references()
        # The no-op before and after the service's runs: what the machine gave it may change meanwhile.
        noop_before = self.noop_reference("noop")
        stages = [self.stage(size, i, all_scenarios, reports) for i, size in enumerate(sizes)]
        soaked = self.soak() if soak else None  # on the last stage's server, warm
        self.stop_service()  # graceful: the batchers drain before the counts
        self.settle()
        noop_after = self.noop_reference("noop-after")
        verification = self.verify()
        check_code, check_output = self.check()
        events: list[services.DatabaseEvent] = []
        if self.cluster is not None:
            log_text = (self.cluster.root / "log").read_text(errors="replace")
            events = services.database_events(log_text, DATABASE)
        return Backend(
            key=kind,
            name=BACKENDS[kind],
            workers=self.workers,
            database=self.database_description(),
            noops=[noop_before, noop_after],
            pgbench=pgb,
            pgbench_c1=pgb1,
            stages=stages,
            verification=verification,
            check_code=check_code,
            check_output=check_output,
            server_log=self.server_log,
            server_log_problems=server_log_problems(OUT / self.server_log),
            soak=soaked,
            database_events=events,
        )

    # -- clean-up

    def cleanup(self) -> None:
        with contextlib.suppress(Exception):
            self.stop_service()
        self.stop_postgres()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def stop_postgres(self) -> None:
        if self.bouncer is not None:
            with contextlib.suppress(OSError):
                shutil.copyfile(self.bouncer.root / "pgbouncer.log", OUT / "pgbouncer.log")
            pg.stop_bouncer(self.bouncer)
            self.bouncer = None
        if self.cluster is not None:
            with contextlib.suppress(OSError):
                shutil.copyfile(self.cluster.root / "log", OUT / "postgres.log")
            log("stopping PostgreSQL and removing its cluster")
            try:
                services.stop_postgres(self.cluster)
            except Exception as exc:
                log(f"could not stop PostgreSQL cleanly: {exc}")
                shutil.rmtree(self.cluster.root, ignore_errors=True)
            self.cluster = None


def summary(r: wrkrun.WrkResult) -> str:
    sales = f", {r.sales_per_s:,.0f} sales/s" if r.sales_per_request > 1 else ""
    per_request = r.cpu_us_per_request
    cpu = f", CPU {per_request:,.0f} µs/req" if per_request is not None else ""
    return f"{r.rps:,.0f} req/s{sales}, p50 {r.p50_ms:.2f} ms, p99 {r.p99_ms:.2f} ms, errors {r.describe_errors()}{cpu}"


# structlog JSON lines at warning level or above, Granian's own warnings and errors, tracebacks.
LOG_PROBLEM = re.compile(r'"level": ?"(?:warning|error|critical)"|\[(?:WARNING|ERROR|CRITICAL)\]|^Traceback')


def server_log_problems(path: Path) -> int:
    if not path.exists():
        return 0
    with path.open(errors="replace") as lines:
        return sum(1 for line in lines if LOG_PROBLEM.search(line))


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM (and SIGHUP) clean up like Ctrl-C does."""

    def interrupt(signum: int, frame: Any) -> NoReturn:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = options(argv)
    wrk_path = wrkrun.ensure_wrk()
    load = os.getloadavg()[0]
    if load > 1:
        log(f"warning: the machine is busy (load average {load:.1f}); the figures will be lower than it can do")
    OUT.mkdir(parents=True, exist_ok=True)
    for old in OUT.iterdir():
        if old.is_file():
            old.unlink()
    started = report.now()
    bench = Bench(args, Path(tempfile.mkdtemp(prefix="salesreport-bench-")))
    all_scenarios = scenarios()
    reports = [s for s in all_scenarios if s.key in ("top-stores", "top-products", "dashboard")]
    reports += [
        Scenario(f"{s.key}+50pages", f"{s.title}, 50 dashboards open", s.path, headers=s.headers)
        for s in all_scenarios
        if s.key in ("top-stores", "top-products")
    ]
    machine = report.machine("not measured (--backend sqlite)", wrkrun.version(wrk_path))
    backends: list[Backend] = []
    with terminate_as_interrupt():
        try:
            for kind in args.backends:
                sizes = args.sizes if kind == "postgresql" else args.sqlite_sizes
                backend = bench.measure_backend(
                    kind, sizes, all_scenarios, reports, soak=args.soak > 0 and not backends
                )
                if kind == "postgresql":
                    assert bench.cluster is not None
                    machine["PostgreSQL"] = bench.cluster.version()
                    machine["service's database endpoint"] = (
                        f"PgBouncer {services.pgbouncer_version()}, pool_mode = transaction, "
                        f"default_pool_size = {args.pgbouncer}"
                        if args.pgbouncer
                        else "PostgreSQL directly"
                    )
                    # An idle cluster still checkpoints and vacuums: not while SQLite is measured.
                    bench.stop_postgres()
                backends.append(backend)
        except KeyboardInterrupt:
            log("interrupted: cleaning up")
            return 130
        finally:
            bench.cleanup()
    machine["load average at end"] = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    run = Run(
        command=command_line(argv),
        started=started,
        finished=report.now(),
        machine=machine,
        duration=args.duration,
        connections=args.connections,
        threads=args.threads,
        workers=args.workers,
        scenarios=all_scenarios,
        reports=reports,
        backends=backends,
        catalog=f"{STORES} stores in {len(ZONES)} time zones, {PRODUCTS:,} products",
    )
    report.write(args.output, report.render(run))
    log(f"wrote {args.output}")
    for b in backends:
        v = b.verification
        log(
            f"{b.name}: stored = acknowledged: {'passed' if v.passed else 'FAILED'} ({v.acked_sales:,} acknowledged, "
            f"{v.stored_sales:,} stored, {v.unacked_sales:,} in flight at cut-off); check: exit {b.check_code}"
        )
    return 0 if all(b.verification.passed and b.check_code == 0 for b in backends) else 1


if __name__ == "__main__":
    raise SystemExit(main())
