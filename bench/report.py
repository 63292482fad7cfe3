"""BENCHMARKS.md: the machine, the figures of one run, and the humans' notes (kept)."""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import platform
import re
import sqlite3
import subprocess
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from services import PG_LOG_SETTINGS, PG_SETTINGS, DatabaseEvent, PgbenchResult
from wrkrun import WrkResult, pooled

NOTES = "## Notes"
DEFAULT_NOTES = f"""{NOTES}

Profiles, explanations and decisions go here: `bench/run.py` rewrites everything above this
section and keeps this section as it is.
"""

# The targets (2-core machine, PostgreSQL on the same machine).
TARGET_POST_RPS = 5_000
TARGET_POST_P99_MS = 50.0
TARGET_BATCH_SALES_S = 60_000
TARGET_REPORT_P99_MS = 5.0
TARGET_REPORT_SLOWDOWN = 1.5
TARGET_SIZE = 10_000_000
TARGET_SQLITE_POST_RPS = 2_000
# Ratios to references measured in the same run, so that they hold on any machine.
TARGET_POST_CPU_VS_NOOP = 2.5  # CPU per one-sale POST ÷ the no-op's CPU per request, at most
TARGET_SALE_CPU_VS_NOOP = 0.15  # CPU per sale of a 100-sale POST ÷ the no-op's CPU per request, at most
TARGET_POST_RATE_VS_NOOP = 0.5  # one-sale POSTs/s ÷ the no-op's req/s, at least
TARGET_C1_VS_PGBENCH = 0.3  # one-sale POSTs/s from one connection ÷ pgbench -c1 tps, at least
TARGET_REPORT_P99_VS_STORES = 1.5  # a report's p99 ÷ GET /stores' p99, from one connection, at most
TARGET_REPORT_RATE_VS_NOOP = 0.4  # a report's req/s at full concurrency ÷ the no-op's req/s, at least

BASE_REPORTS = ("top-stores", "top-products", "dashboard")


@dataclass
class Scenario:
    key: str
    title: str
    path: str
    batch: int = 0  # sales per POST request; 0 for a GET
    # Sent with each request, as ``Name: value`` (a GET's Accept-Encoding: what its clients send).
    headers: tuple[str, ...] = ()

    @property
    def is_post(self) -> bool:
        return self.batch > 0


@dataclass
class Stage:
    size: int  # the nominal number of sales stored
    loaded: int  # history loaded for this stage
    load_seconds: float
    sales_at_start: int = 0
    sales_at_end: int = 0
    results: dict[str, WrkResult] = field(default_factory=dict)  # 64 connections
    single: dict[str, WrkResult] = field(default_factory=dict)  # 1 connection: post-1, stores and the reports
    page: Any = None  # page.PageResult: the dashboard drawn in Chromium, if it is installed


@dataclass
class Verification:
    post_runs: int
    connections: int
    wrk_acked_requests: int  # 2xx answers counted by wrk's Lua done()
    acked_requests: int  # 2xx answers whose idempotency key was read back from the body
    acked_sales: int
    duplicate_acks: int
    stored_requests: int
    stored_sales: int  # sales stored through HTTP during this run
    missing_sales: int  # acknowledged but not stored
    mismatched_requests: int  # acknowledged requests not stored exactly once, completely
    partial_requests: int  # stored requests holding a number of sales no request had
    unacked_requests: int  # stored, but wrk stopped before reading the answer
    unacked_sales: int
    history_sales: int  # loaded through the bulk path (no idempotency key)
    total_sales: int

    @property
    def passed(self) -> bool:
        return (
            self.missing_sales == 0
            and self.mismatched_requests == 0
            and self.partial_requests == 0
            and self.duplicate_acks == 0
            and self.acked_requests == self.wrk_acked_requests
            and self.unacked_requests <= self.post_runs * self.connections
            and self.stored_sales == self.acked_sales + self.unacked_sales
            and self.total_sales == self.history_sales + self.stored_sales
        )


@dataclass
class Soak:
    seconds: int
    interval: float
    result: WrkResult
    rss: dict[str, list[tuple[float, int]]]  # process label -> (seconds since start, KiB)


@dataclass
class Backend:
    """One database under the service, with its own references measured in the same run."""

    key: str  # "postgresql" or "sqlite"
    name: str
    workers: int  # Granian workers of the service and of its no-op (SQLite: one writer, one worker)
    database: str  # what DATABASE_URL pointed at
    noops: list[WrkResult]  # the no-op, before and after the service's runs
    pgbench: PgbenchResult | None  # None on SQLite: pgbench is a PostgreSQL client
    pgbench_c1: PgbenchResult | None
    stages: list[Stage]
    verification: Verification
    check_code: int
    check_output: str
    server_log: str
    server_log_problems: int
    soak: Soak | None = None
    database_events: list[DatabaseEvent] = field(default_factory=list)  # PostgreSQL's, from its log

    @property
    def noop(self) -> WrkResult:
        """The reference of every ratio: the no-op's runs pooled."""
        return pooled(self.noops)

    @property
    def noop_cpu(self) -> float | None:
        return self.noop.cpu_us_per_request


@dataclass
class Run:
    command: str
    started: datetime
    finished: datetime
    machine: dict[str, str]
    duration: int
    connections: int
    threads: int
    workers: int
    scenarios: list[Scenario]
    reports: list[Scenario]  # measured from one connection too
    backends: list[Backend]
    catalog: str


# --- the machine -------------------------------------------------------------------


def _first(pattern: str, path: str) -> str:
    with contextlib.suppress(OSError):
        match = re.search(pattern, Path(path).read_text(), re.MULTILINE)
        if match:
            return match.group(1).strip()
    return "?"


def _command(*argv: str) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    lines = (done.stdout + done.stderr).strip().splitlines()
    return lines[0] if lines else "?"


def machine(pg_version: str, wrk: str) -> dict[str, str]:
    mem_kib = _first(r"^MemTotal:\s+(\d+) kB", "/proc/meminfo")
    memory = f"{int(mem_kib) / 1024**2:.1f} GiB" if mem_kib.isdigit() else "?"
    root = Path(__file__).resolve().parent.parent
    commit = _command("git", "-C", str(root), "rev-parse", "--short", "HEAD")
    dirty = _command("git", "-C", str(root), "status", "--porcelain", "--untracked-files=no")
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return {
        "CPUs (nproc)": str(len(os.sched_getaffinity(0))),
        "CPU model": _first(r"^model name\s*:\s*(.+)$", "/proc/cpuinfo"),
        "RAM": memory,
        "OS": _first(r'^PRETTY_NAME="?([^"\n]+)"?$', "/etc/os-release"),
        "kernel": platform.release(),
        "Python": platform.python_version(),
        "PostgreSQL": pg_version,
        "SQLite": sqlite3.sqlite_version,
        "Granian / Starlette / msgspec": " / ".join(
            importlib.metadata.version(name) for name in ("granian", "starlette", "msgspec")
        ),
        "wrk": wrk,
        "git commit": commit + (" (with uncommitted changes)" if dirty not in ("", "?") else ""),
        "load average at start": load,
        "scheduler autogroups (`sched_autogroup_enabled`)": _autogroup(),
    }


def _autogroup() -> str:
    """Whether the kernel gives each session a CPU share of its own: each server (the no-op too) runs in
    a session of its own, and this doubles or halves the no-op's figures (BENCHMARKS.md, "Notes")."""
    try:
        value = Path("/proc/sys/kernel/sched_autogroup_enabled").read_text().strip()
    except OSError:
        return "not in this kernel"
    return {"1": "on", "0": "off"}.get(value, value)


# --- formatting ----------------------------------------------------------------------


def count(n: float) -> str:
    return f"{n:,.0f}"


def size(n: int) -> str:
    for unit, scale in (("M", 1_000_000), ("k", 1_000)):
        if n >= scale and n % (scale // 10) == 0:
            return f"{n / scale:g}{unit}"
    return str(n)


def ms(value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value:.2f} ms" if value < 10 else f"{value:.1f} ms" if value < 100 else f"{value:,.0f} ms"


def ratio(value: float | None, ceiling: float | None) -> str:
    return f"{value / ceiling:.2f}×" if value is not None and ceiling else "—"


def quotient(value: float | None, ceiling: float | None) -> float | None:
    return value / ceiling if value is not None and ceiling else None


def cpu(us: float | None) -> str:
    if us is None:
        return "—"
    return f"{us:.1f}" if us < 100 else f"{us:,.0f}"


def yes(passed: bool) -> str:
    return "**met**" if passed else "**NOT met**"


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    right = ["---:" if i else "---" for i in range(len(header))]
    return [
        "| " + " | ".join(header) + " |",
        "|" + "|".join(right) + "|",
        *("| " + " | ".join(row) + " |" for row in rows),
    ]


# --- sections ------------------------------------------------------------------------


def _header(run: Run) -> list[str]:
    took = (run.finished - run.started).total_seconds()
    service = "; ".join(
        f"{b.name}: `python -m salesreport serve --workers {b.workers}` on {b.database}" for b in run.backends
    )
    kinds = {b.key for b in run.backends}
    databases = []
    if "postgresql" in kinds:
        databases.append(
            "- PostgreSQL: a throwaway cluster on the same machine and disk, "
            + ", ".join(f"`{k}={v}`" for k, v in PG_SETTINGS.items())
            + " (durable, as production); every other setting at its default, but for logging: "
            + ", ".join(f"`{k}={v}`" for k, v in PG_LOG_SETTINGS.items())
            + " (what the server did during each run: under the references, each stage's tables and the soak)."
        )
    if "sqlite" in kinds:
        databases.append(
            "- SQLite: a file in a temporary directory, with the service's own settings (the embedded default)."
        )
    return [
        "# Benchmarks",
        "",
        f"Written by `bench/run.py` on {run.started:%Y-%m-%d %H:%M} UTC ({took / 60:.0f} min), with:",
        "",
        "```",
        run.command,
        "```",
        "",
        "## Machine",
        "",
        *table(["", ""], [[k, v] for k, v in run.machine.items()]),
        "",
        "## Setup",
        "",
        *databases,
        f"- Service: {service} (Granian, ASGI, HTTP/1.1), `SALESREPORT_LOG_FORMAT=json`, every other "
        "`SALESREPORT_*` setting at its default.",
        f"- Catalog: {run.catalog}, imported with `python -m salesreport import`.",
        "- History: loaded with the server stopped through `salesreport.ingestion.store_history` (the bulk "
        "path, rows from `salesreport.demo.sales`, 50,000 per transaction). POST scenarios add their sales on "
        "top, so each stage gives its count at start and end. Every stage, loaded or not, starts with the "
        "server stopped, `VACUUM ANALYZE` and `CHECKPOINT` (SQLite: `ANALYZE` and a WAL checkpoint), and a "
        "new server; so does the no-op's second run. The one-sale POSTs from one connection, which come after "
        "the 100-sale POSTs, start as pgbench -c1 does, on a quiet cluster: the server running, the "
        "autovacuum under way let finish, then `VACUUM ANALYZE` of what the POSTs wrote (SQLite: nothing) "
        "and one more checkpoint.",
        f"- Load: `wrk -t{run.threads} -c{run.connections} -d{run.duration}s --latency` on 127.0.0.1, scripts "
        "`bench/post.lua` and `bench/get.lua`. Every POSTed sale has its own store/product pair (cycling "
        "through all ids) and an idempotency key unique in the run. Errors are non-2xx answers plus wrk "
        "socket errors (timeouts at 2 s included).",
        "- GETs send the `Accept-Encoding` of their clients: the dashboard's Chromium's (`gzip, deflate, br, "
        "zstd`), the API's that of Python's `requests` and `httpx` (`gzip, deflate`); so the bodies of 1 KB "
        "and more (the page, the catalog's lists, the top stores) come gzip-compressed, as the service sends them "
        "to those clients.",
        "- Percentiles: as wrk prints them, corrected for coordinated omission (`stats_correct` in wrk's "
        "source): a response slower than twice a connection's mean interval (the run's length over the "
        "requests per connection) adds the requests that connection would have sent meanwhile, with the "
        "latencies they would have had. From one connection at about 1.5 ms per request, one 200 ms pause "
        "(a checkpoint's writes, say) adds about 130 samples between 200 and 1.5 ms, so a few such pauses "
        "make the p99; `max` is the longest response itself.",
        "- CPU: user + system time (utime + stime in `/proc/PID/stat`) of the server's whole process tree "
        "(Granian's main process and its workers), read just before and just after each wrk run, divided by "
        "the requests wrk counted (and by the sales per request). It leaves out wrk's and PostgreSQL's CPU, "
        "so it depends far less than the rates on what else the machine does.",
        "- Ratios: each figure divided by the reference measured in the same run with the same backend "
        "(below): the no-op app's rate and CPU per request, pgbench's rate. The no-op runs before the "
        "service's runs and again after them (the soak included), and the ratios take the two runs "
        "pooled, so that a change in what the machine gives the processes during the run moves the "
        "reference too. Every server, the no-op too, "
        "runs in a session of its own; with the kernel's scheduler autogroups on (see Machine), each session "
        "shares the CPU fairly with wrk's, and the no-op, whose CPU goes to wake-ups, can then cost up to "
        "twice as much per request as when started from wrk's session (the service about the same; "
        "BENCHMARKS.md, Notes).",
        "",
    ]


def _noop_title(backend: Backend) -> str:
    return (
        f"no-op POST: a bare ASGI app (reads the body, answers a fixed 201 JSON) on Granian, the settings of "
        f"`serve` and {backend.workers} worker{'s' if backend.workers > 1 else ''}, same wrk script (`bench/noop.py`)"
    )


# The no-op's runs, in the order ``Backend.noops`` holds them.
_NOOP_RUNS = ("before the service's runs", "after them")


def _spread(values: list[float | None]) -> str:
    known = [v for v in values if v is not None]
    if len(known) < 2 or not min(known):
        return "?"
    return f"{(max(known) / min(known) - 1) * 100:.0f}%"


def _pgbench_row(pgb: PgbenchResult) -> list[str]:
    return [
        f"PostgreSQL durable single-row INSERT per transaction into a table shaped like `sales` "
        f"(pgbench, {pgb.clients} client{'s' if pgb.clients > 1 else ''}, -j{pgb.threads}, {pgb.duration} s)",
        f"{count(pgb.tps)} tps",
        ms(pgb.p50_ms),
        ms(pgb.p99_ms),
        str(pgb.failed),
        "—",
    ]


def _ceilings(run: Run) -> list[str]:
    lines = ["## References measured in this run", ""]
    for b in run.backends:
        rows = [
            [
                f"{_noop_title(b)}, {when}",
                f"{count(noop.rps)} req/s",
                ms(noop.p50_ms),
                ms(noop.p99_ms),
                noop.describe_errors(),
                cpu(noop.cpu_us_per_request),
            ]
            for noop, when in zip(b.noops, _NOOP_RUNS, strict=False)
        ]
        if len(b.noops) > 1:
            spread = _spread([r.cpu_us_per_request for r in b.noops])
            rows.append(
                [
                    f"the no-op's runs pooled (their requests over their time, their CPU over their requests): "
                    f"the reference of every ratio below; its CPU per request differed by {spread} between them",
                    f"{count(b.noop.rps)} req/s",
                    "—",
                    "—",
                    b.noop.describe_errors(),
                    cpu(b.noop.cpu_us_per_request),
                ]
            )
        for pgb in (b.pgbench, b.pgbench_c1):
            if pgb is not None:
                rows.append(_pgbench_row(pgb))
        if b.pgbench is None:
            rows.append(
                ["pgbench: does not apply to SQLite (a PostgreSQL client, no server here)", "—", "—", "—", "—", "—"]
            )
        lines += [
            f"### {b.name}",
            "",
            *table(["reference", "rate", "p50", "p99", "errors", "server CPU µs/req"], rows),
            "",
        ]
        if b.key == "postgresql":
            runs = [(f"the no-op, {when}", r) for r, when in zip(b.noops, _NOOP_RUNS, strict=False)]
            lines += _events(b, runs, "the no-op's runs")
    return lines


def _per_stage(stages: list[Stage], value: Any, fmt: Any) -> tuple[str, list[float | None]]:
    """'0: x; 1M: y' for the stages that have a figure, and the figures."""
    figures = [(s, value(s)) for s in stages]
    figures = [(s, v) for s, v in figures if v is not None]
    return "; ".join(f"{size(s.size)}: {fmt(v)}" for s, v in figures), [v for _, v in figures]


def _row(target: str, measured: str, figures: list[Any], passes: Any) -> list[str]:
    if not figures:
        return [target, measured or "not measured", "—"]
    return [target, measured, yes(all(f is not None and passes(f) for f in figures))]


def _backend_targets(run: Run, b: Backend) -> list[list[str]]:
    rows = []
    name = f"{b.name}: "
    stages = b.stages
    post = [(s, s.results["post-1"]) for s in stages if "post-1" in s.results]
    if b.key == "postgresql" and post:
        measured = "; ".join(
            f"{size(s.size)}: {count(r.rps)} req/s, p99 {ms(r.p99_ms)}, {r.errors} errors" for s, r in post
        )
        met = all(r.rps >= TARGET_POST_RPS and r.p99_ms <= TARGET_POST_P99_MS and r.errors == 0 for _, r in post)
        rows.append(
            [
                f"{name}POST 1 sale ≥ {count(TARGET_POST_RPS)} req/s, p99 ≤ {TARGET_POST_P99_MS:g} ms, no errors",
                measured,
                yes(met),
            ]
        )
    if b.key == "sqlite":
        measured = "; ".join(f"{size(s.size)}: {count(r.rps)} req/s, {r.errors} errors" for s, r in post)
        met = bool(post) and all(r.rps >= TARGET_SQLITE_POST_RPS and r.errors == 0 for _, r in post)
        rows.append(
            [
                f"{name}embedded default ≥ {count(TARGET_SQLITE_POST_RPS)} single-sale POSTs/s, no errors",
                measured or "not measured",
                yes(met) if post else "—",
            ]
        )
    batch = [(s, s.results["post-100"]) for s in stages if "post-100" in s.results]
    if b.key == "postgresql" and batch:
        measured = "; ".join(f"{size(s.size)}: {count(r.sales_per_s)} sales/s" for s, r in batch)
        met = all(r.sales_per_s >= TARGET_BATCH_SALES_S for _, r in batch)
        rows.append([f"{name}POST 100 sales ≥ {count(TARGET_BATCH_SALES_S)} sales/s", measured, yes(met)])

    measured, figures = _per_stage(
        stages, lambda s: quotient(_cpu_req(s.results.get("post-1")), b.noop_cpu), lambda v: f"{v:.2f}×"
    )
    rows.append(
        _row(
            f"{name}CPU per one-sale POST ≤ {TARGET_POST_CPU_VS_NOOP:g}× the no-op's CPU per request",
            measured,
            figures,
            lambda v: v <= TARGET_POST_CPU_VS_NOOP,
        )
    )
    measured, figures = _per_stage(
        stages, lambda s: quotient(_cpu_sale(s.results.get("post-100")), b.noop_cpu), lambda v: f"{v:.3f}×"
    )
    rows.append(
        _row(
            f"{name}CPU per sale of 100-sale POSTs ≤ {TARGET_SALE_CPU_VS_NOOP:g}× the no-op's CPU per request",
            measured,
            figures,
            lambda v: v <= TARGET_SALE_CPU_VS_NOOP,
        )
    )
    measured, figures = _per_stage(
        stages, lambda s: quotient(_rate(s.results.get("post-1")), b.noop.rps), lambda v: f"{v:.2f}×"
    )
    rows.append(
        _row(
            f"{name}one-sale POSTs/s ≥ {TARGET_POST_RATE_VS_NOOP:g}× the no-op's req/s",
            measured,
            figures,
            lambda v: v >= TARGET_POST_RATE_VS_NOOP,
        )
    )
    target = f"{name}one-sale POSTs/s from one connection ≥ {TARGET_C1_VS_PGBENCH:g}× pgbench -c1 tps"
    if b.pgbench_c1 is None:
        rows.append([target, "does not apply: pgbench is a PostgreSQL client", "—"])
    else:
        tps = b.pgbench_c1.tps
        measured, figures = _per_stage(
            stages, lambda s: quotient(_rate(s.single.get("post-1")), tps), lambda v: f"{v:.2f}×"
        )
        rows.append(_row(target, measured, figures, lambda v: v >= TARGET_C1_VS_PGBENCH))
    for report in [r for r in run.reports if r.key in BASE_REPORTS]:
        measured, figures = _per_stage(
            stages,
            lambda s, key=report.key: quotient(_p99(s.single.get(key)), _p99(s.single.get("stores"))),
            lambda v: f"{v:.2f}×",
        )
        rows.append(
            _row(
                f"{name}{report.title}: p99 ≤ {TARGET_REPORT_P99_VS_STORES:g}× GET /stores' p99, one connection",
                measured,
                figures,
                lambda v: v <= TARGET_REPORT_P99_VS_STORES,
            )
        )
        measured, figures = _per_stage(
            stages,
            lambda s, key=report.key: quotient(_rate(s.results.get(key)), b.noop.rps),
            lambda v: f"{v:.2f}×",
        )
        rows.append(
            _row(
                f"{name}{report.title}: req/s at {run.connections} connections ≥ {TARGET_REPORT_RATE_VS_NOOP:g}× "
                "the no-op's req/s",
                measured,
                figures,
                lambda v: v >= TARGET_REPORT_RATE_VS_NOOP,
            )
        )
    if b.key == "postgresql" and stages:
        first, last = stages[0], stages[-1]
        measured_there = last.size >= TARGET_SIZE
        caveat = "" if measured_there else f" (largest size measured: {size(last.size)}; run with --big)"

        def verdict(passed: bool) -> str:
            # A target set at 10M is judged only where 10M was measured; below, the figure is shown as a hint.
            return (
                yes(passed)
                if measured_there
                else f"not measured at 10M ({'met' if passed else 'missed'} at {size(last.size)})"
            )

        for report in run.reports:
            single = last.single.get(report.key)
            if single:
                rows.append(
                    [
                        f"{name}{report.title}: p99 ≤ {TARGET_REPORT_P99_MS:g} ms from one connection at 10M sales",
                        f"{size(last.size)}: p99 {ms(single.p99_ms)}{caveat}",
                        verdict(single.p99_ms <= TARGET_REPORT_P99_MS),
                    ]
                )
            at0, atn = first.results.get(report.key), last.results.get(report.key)
            if at0 and atn and len(stages) > 1:
                slowdown = at0.rps / atn.rps if atn.rps else float("inf")
                rows.append(
                    [
                        f"{name}{report.title}: req/s at 10M within {TARGET_REPORT_SLOWDOWN:g}× of 0 sales",
                        f"{count(at0.rps)} → {count(atn.rps)} req/s ({slowdown:.2f}×){caveat}",
                        verdict(slowdown <= TARGET_REPORT_SLOWDOWN),
                    ]
                )
    return rows


def _cpu_req(r: WrkResult | None) -> float | None:
    return r.cpu_us_per_request if r else None


def _cpu_sale(r: WrkResult | None) -> float | None:
    return r.cpu_us_per_sale if r else None


def _rate(r: WrkResult | None) -> float | None:
    return r.rps if r else None


def _p99(r: WrkResult | None) -> float | None:
    return r.p99_ms if r else None


def _targets(run: Run) -> list[str]:
    rows = [row for b in run.backends for row in _backend_targets(run, b)]
    if not any(b.key == "sqlite" for b in run.backends):
        rows.append(
            ["SQLite: embedded default ≥ 2,000 single-sale POSTs/s", "not measured (--backend postgresql)", "—"]
        )
    return ["## Targets", "", *table(["target", "measured", ""], rows), ""]


def _stage(run: Run, b: Backend, stage: Stage) -> list[str]:
    noop, noop_cpu = b.noop.rps, b.noop_cpu
    tps = b.pgbench.tps if b.pgbench else None
    rows = []
    for scenario in run.scenarios:
        r = stage.results.get(scenario.key)
        if r is None:
            continue
        if b.pgbench is None:
            vs_pgbench = "n/a (SQLite)" if scenario.batch == 1 else "—"
        else:
            vs_pgbench = ratio(r.rps, tps) if scenario.batch == 1 else "—"
        rows.append(
            [
                scenario.title,
                count(r.rps),
                count(r.sales_per_s) if scenario.is_post else "—",
                ms(r.p50_ms),
                ms(r.p99_ms),
                r.describe_errors(),
                cpu(r.cpu_us_per_request),
                cpu(r.cpu_us_per_sale),
                ratio(r.cpu_us_per_request, noop_cpu),
                ratio(r.cpu_us_per_sale, noop_cpu) if scenario.is_post else "—",
                ratio(r.rps, noop),
                vs_pgbench,
            ]
        )
    if stage.loaded and stage.load_seconds:
        rate = count(stage.loaded / stage.load_seconds)
        loaded = f"History: {count(stage.loaded)} sales loaded in {stage.load_seconds:.0f} s ({rate}/s). "
    elif stage.size:
        loaded = "No history loaded: the POSTs of the earlier stages already stored more. "
    else:
        loaded = ""
    lines = [
        f"## {b.name}: {size(stage.size)} sales stored",
        "",
        f"{loaded}{count(stage.sales_at_start)} sales stored at the start of the stage, "
        f"{count(stage.sales_at_end)} at its end.",
        "",
        *table(
            [
                "scenario",
                "req/s",
                "sales/s",
                "p50",
                "p99",
                "errors",
                "CPU µs/req",
                "CPU µs/sale",
                "CPU/req vs no-op",
                "CPU/sale vs no-op/req",
                "req/s vs no-op",
                "vs pgbench",
            ],
            rows,
        ),
        "",
    ]
    if stage.single:
        stores = stage.single.get("stores")
        tps1 = b.pgbench_c1.tps if b.pgbench_c1 else None
        single_rows = []
        titles = {s.key: s.title for s in run.scenarios}
        keys = ["post-1", "stores", *(s.key for s in run.reports)]
        titles |= {s.key: s.title for s in run.reports}
        for key in keys:
            r = stage.single.get(key)
            if r is None:
                continue
            vs_pgbench = "—"
            if key == "post-1":
                vs_pgbench = ratio(r.rps, tps1) if tps1 else "n/a (SQLite)"
            single_rows.append(
                [
                    titles[key],
                    count(r.rps),
                    ms(r.p50_ms),
                    ms(r.p99_ms),
                    ms(r.max_ms),
                    r.describe_errors(),
                    cpu(r.cpu_us_per_request),
                    ratio(r.p99_ms, stores.p99_ms if stores else None) if r.sales_per_request == 0 else "—",
                    vs_pgbench,
                ]
            )
        lines += [
            f"From one connection (`wrk -t1 -c1 -d{run.duration}s`"
            + ("; pgbench -c1 -j1 for the reference" if b.pgbench_c1 else "")
            + "). The "
            "CPU per request of a single connection includes whatever else the service does meanwhile (its "
            "background tasks), spread over few requests; with 50 dashboards open it includes their polls:",
            "",
            *table(
                [
                    "scenario",
                    "req/s",
                    "p50",
                    "p99",
                    "max",
                    "errors",
                    "CPU µs/req",
                    "p99 vs GET /stores",
                    "vs pgbench -c1",
                ],
                single_rows,
            ),
            "",
        ]
    if b.key == "postgresql":
        lines += _events_during(run, b, stage)
    if stage.page is not None:
        p = stage.page
        lines += [
            f"The dashboard (`{p.path}`) in headless Chromium, {len(p.drawn_ms)} loads each in a new context "
            f"(nothing cached): drawn (load event) in {p.median_ms:.0f} ms median, {p.worst_ms:.0f} ms at worst; "
            f"{p.bytes_loaded:,} bytes loaded in all (HTML, CSS, script).",
            "",
        ]
    return lines


def _events_during(run: Run, b: Backend, stage: Stage) -> list[str]:
    """The checkpoints and autovacuum runs of PostgreSQL's log that overlapped each run of the stage:
    a pause in the database shows in the p99s of the runs it overlapped."""
    titles = {s.key: s.title for s in [*run.scenarios, *run.reports]}
    runs = [(titles.get(key, key), r) for key, r in stage.results.items()]
    runs += [(f"{titles.get(key, key)}, one connection", r) for key, r in stage.single.items()]
    return _events(b, runs, "this stage's runs")


def _events(b: Backend, runs: list[tuple[str, WrkResult]], what: str) -> list[str]:
    if not b.database_events:
        return [f"PostgreSQL's log gave no checkpoint and no autovacuum at all in this run ({what}: none listed).", ""]
    items = []
    for title, r in runs:
        if r.started is None or r.ended is None:
            continue
        during = [e for e in b.database_events if e.overlaps(r.started, r.ended)]
        long = [_event(e, r.started, r.ended) for e in during if e.end is None or e.end - e.start >= _SHORT_EVENT]
        short = len(during) - len(long)
        if short:
            long.append(f"{short} {'more ' if long else ''}shorter than {_SHORT_EVENT:g} s")
        if long:
            items.append(f"- {title}: " + "; ".join(long))
    if not items:
        return [f"PostgreSQL's log shows no checkpoint and no autovacuum during {what}.", ""]
    return [f"PostgreSQL's log during {what} (checkpoints, autovacuum and autoanalyze):", "", *items, ""]


_SHORT_EVENT = 0.1  # seconds: a checkpoint of little or autovacuum of a small table, counted only


def _event(e: DatabaseEvent, started: float, ended: float) -> str:
    def at(t: float) -> str:
        return datetime.fromtimestamp(t, UTC).strftime("%H:%M:%S")

    if e.end is None:
        return f"{e.what} from {at(e.start)}, not complete when the log was read"
    inside = min(e.end, ended) - max(e.start, started)
    return f"{e.what} {at(e.start)}-{at(e.end)} ({e.end - e.start:.1f} s, {inside:.1f} s of it during the run)"


def _verification(b: Backend) -> list[str]:
    v = b.verification
    rows = [
        ["wrk runs of POST /sales (stages and soak)", count(v.post_runs)],
        ["acknowledged (2xx) requests, counted by wrk", count(v.wrk_acked_requests)],
        ["acknowledged requests, keys read back from the answers", count(v.acked_requests)],
        ["acknowledged sales", count(v.acked_sales)],
        ["sales stored through HTTP (rows with this run's keys)", count(v.stored_sales)],
        ["acknowledged sales missing from the database", count(v.missing_sales)],
        ["acknowledged requests not stored exactly once and whole", count(v.mismatched_requests)],
        ["stored requests with a partial number of sales", count(v.partial_requests)],
        [
            f"stored, answer not read: in flight when wrk stopped (≤ {v.connections} per run)",
            f"{count(v.unacked_requests)} requests, {count(v.unacked_sales)} sales",
        ],
        ["history sales (bulk path)", count(v.history_sales)],
        ["sales in the table", count(v.total_sales)],
    ]
    verdict = (
        "stored = acknowledged + in flight at the cut-off, and every acknowledged sale is stored"
        if v.passed
        else "MISMATCH"
    )
    check = b.check_output.strip().splitlines()[-1] if b.check_output.strip() else ""
    return [
        f"## {b.name}: sales stored = sales acknowledged",
        "",
        *table(["", ""], rows),
        "",
        f"Result: **{'passed' if v.passed else 'FAILED'}**: {verdict}.",
        "",
        f"`python -m salesreport check`: exit code {b.check_code} "
        f"({'passed' if b.check_code == 0 else 'FAILED'}): `{check}`",
        "",
        f"Server log: {b.server_log_problems} lines at warning level or worse (`bench/out/{b.server_log}`).",
        "",
    ]


def _soak(b: Backend, soak: Soak) -> list[str]:
    r = soak.result
    rows = []
    for label, samples in soak.rss.items():
        if not samples:
            continue
        values = [kib for _, kib in samples]
        rows.append(
            [
                label,
                f"{values[0] / 1024:.1f}",
                f"{max(values) / 1024:.1f}",
                f"{values[-1] / 1024:.1f}",
                f"{(values[-1] - values[0]) / 1024:+.1f}",
            ]
        )
    return [
        f"## {b.name}: soak, POST of one sale for {soak.seconds} s",
        "",
        f"{count(r.rps)} req/s, p50 {ms(r.p50_ms)}, p99 {ms(r.p99_ms)}, errors {r.describe_errors()}, "
        f"{cpu(r.cpu_us_per_request)} CPU µs/req; RSS sampled every {soak.interval:g} s from /proc/PID/status (VmRSS).",
        "",
        *table(["process", "RSS at start (MiB)", "peak (MiB)", "end (MiB)", "end − start (MiB)"], rows),
        "",
        *(_events(b, [("the soak", r)], "the soak") if b.key == "postgresql" else []),
    ]


def render(run: Run) -> str:
    lines = _header(run) + _ceilings(run) + _targets(run)
    for b in run.backends:
        for stage in b.stages:
            lines += _stage(run, b, stage)
        lines += _verification(b)
        if b.soak:
            lines += _soak(b, b.soak)
    return "\n".join(lines)


def write(path: Path, body: str) -> None:
    """Write the run's figures, keeping the existing "## Notes" section and everything after it."""
    notes = DEFAULT_NOTES
    if path.exists():
        old = path.read_text(encoding="utf-8")
        match = re.search(rf"^{re.escape(NOTES)}\b", old, re.MULTILINE)
        if match:
            notes = old[match.start() :]
    path.write_text(body.rstrip("\n") + "\n\n" + notes.rstrip("\n") + "\n", encoding="utf-8")


def now() -> datetime:
    return datetime.now(UTC)
