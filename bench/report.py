"""BENCHMARKS.md: the machine, the figures of one run, and the humans' notes (kept)."""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import platform
import re
import subprocess
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from services import PG_SETTINGS, PgbenchResult
from wrkrun import WrkResult

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


@dataclass
class Scenario:
    key: str
    title: str
    path: str
    batch: int = 0  # sales per POST request; 0 for a GET

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
    single: dict[str, WrkResult] = field(default_factory=dict)  # 1 connection
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
    noop: WrkResult
    pgbench: PgbenchResult
    stages: list[Stage]
    verification: Verification
    check_code: int
    check_output: str
    soak: Soak | None
    server_log_problems: int
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
        "Granian / Starlette / msgspec": " / ".join(
            importlib.metadata.version(name) for name in ("granian", "starlette", "msgspec")
        ),
        "wrk": wrk,
        "git commit": commit + (" (with uncommitted changes)" if dirty not in ("", "?") else ""),
        "load average at start": load,
    }


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


def ratio(value: float, ceiling: float) -> str:
    return f"{value / ceiling:.2f}×" if ceiling else "—"


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
        "- PostgreSQL: a throwaway cluster on the same machine and disk, "
        + ", ".join(f"`{k}={v}`" for k, v in PG_SETTINGS.items())
        + " (durable, as production); every other setting at its default.",
        f"- Service: `python -m salesreport serve --workers {run.workers}` (Granian, ASGI, HTTP/1.1), "
        "`SALESREPORT_LOG_FORMAT=json`, every other `SALESREPORT_*` setting at its default.",
        f"- Catalog: {run.catalog}, imported with `python -m salesreport import`.",
        "- History: loaded with the server stopped through `salesreport.ingestion.store_history` (the bulk "
        "path, rows from `salesreport.demo.sales`, 50,000 per transaction), then `VACUUM ANALYZE` and "
        "`CHECKPOINT`. POST scenarios add their sales on top, so each stage gives its count at start and end.",
        f"- Load: `wrk -t{run.threads} -c{run.connections} -d{run.duration}s --latency` on 127.0.0.1, scripts "
        "`bench/post.lua` and `bench/get.lua`. Every POSTed sale has its own store/product pair (cycling "
        "through all ids) and an idempotency key unique in the run. Errors are non-2xx answers plus wrk "
        "socket errors (timeouts at 2 s included).",
        "- Ratios: each figure divided by the ceiling measured in the same run (below).",
        "",
    ]


def _ceilings(run: Run) -> list[str]:
    noop, pgb = run.noop, run.pgbench
    rows = [
        [
            "no-op POST: Starlette on Granian, same settings and workers, same wrk script (`bench/noop.py`)",
            f"{count(noop.rps)} req/s",
            ms(noop.p50_ms),
            ms(noop.p99_ms),
            noop.describe_errors(),
        ],
        [
            f"PostgreSQL durable single-row INSERT per transaction into a table shaped like `sales` "
            f"(pgbench, {run.connections} clients, -j{run.threads}, {run.duration} s)",
            f"{count(pgb.tps)} tps",
            ms(pgb.p50_ms),
            ms(pgb.p99_ms),
            str(pgb.failed),
        ],
    ]
    return ["## Ceilings of this machine", "", *table(["ceiling", "rate", "p50", "p99", "errors"], rows), ""]


def _targets(run: Run) -> list[str]:
    rows = []
    post = [(s, s.results["post-1"]) for s in run.stages if "post-1" in s.results]
    if post:
        measured = "; ".join(
            f"{size(s.size)}: {count(r.rps)} req/s, p99 {ms(r.p99_ms)}, {r.errors} errors" for s, r in post
        )
        met = all(r.rps >= TARGET_POST_RPS and r.p99_ms <= TARGET_POST_P99_MS and r.errors == 0 for _, r in post)
        rows.append(
            [
                f"POST 1 sale ≥ {count(TARGET_POST_RPS)} req/s, p99 ≤ {TARGET_POST_P99_MS:g} ms, no errors",
                measured,
                yes(met),
            ]
        )
    batch = [(s, s.results["post-100"]) for s in run.stages if "post-100" in s.results]
    if batch:
        measured = "; ".join(f"{size(s.size)}: {count(r.sales_per_s)} sales/s" for s, r in batch)
        met = all(r.sales_per_s >= TARGET_BATCH_SALES_S for _, r in batch)
        rows.append([f"POST 100 sales ≥ {count(TARGET_BATCH_SALES_S)} sales/s", measured, yes(met)])
    first, last = run.stages[0], run.stages[-1]
    caveat = "" if last.size >= TARGET_SIZE else f" (largest size measured: {size(last.size)}; run with --big)"
    for report in run.reports:
        single = last.single.get(report.key)
        if single:
            rows.append(
                [
                    f"{report.title}: p99 ≤ {TARGET_REPORT_P99_MS:g} ms from one connection at 10M sales",
                    f"{size(last.size)}: p99 {ms(single.p99_ms)}{caveat}",
                    yes(single.p99_ms <= TARGET_REPORT_P99_MS),
                ]
            )
        at0, atn = first.results.get(report.key), last.results.get(report.key)
        if at0 and atn and len(run.stages) > 1:
            slowdown = at0.rps / atn.rps if atn.rps else float("inf")
            rows.append(
                [
                    f"{report.title}: req/s at 10M within {TARGET_REPORT_SLOWDOWN:g}× of 0 sales",
                    f"{count(at0.rps)} → {count(atn.rps)} req/s ({slowdown:.2f}×){caveat}",
                    yes(slowdown <= TARGET_REPORT_SLOWDOWN),
                ]
            )
    rows.append(["SQLite embedded default ≥ 2,000 single-sale POSTs/s", "not measured by `make bench`", "—"])
    return ["## Targets", "", *table(["target", "measured", ""], rows), ""]


def _stage(run: Run, stage: Stage) -> list[str]:
    noop, tps = run.noop.rps, run.pgbench.tps
    rows = []
    for scenario in run.scenarios:
        r = stage.results.get(scenario.key)
        if r is None:
            continue
        rows.append(
            [
                scenario.title,
                count(r.rps),
                count(r.sales_per_s) if scenario.is_post else "—",
                ms(r.p50_ms),
                ms(r.p99_ms),
                r.describe_errors(),
                ratio(r.rps, noop),
                ratio(r.rps, tps) if scenario.batch == 1 else "—",
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
        f"## {size(stage.size)} sales stored",
        "",
        f"{loaded}{count(stage.sales_at_start)} sales stored at the start of the stage, "
        f"{count(stage.sales_at_end)} at its end.",
        "",
        *table(
            ["scenario", "req/s", "sales/s", "p50", "p99", "errors", "vs no-op POST", "vs pgbench"],
            rows,
        ),
        "",
    ]
    if stage.single:
        single_rows = [
            [s.title, count(r.rps), ms(r.p50_ms), ms(r.p99_ms), ms(r.max_ms), r.describe_errors()]
            for s in run.reports
            if (r := stage.single.get(s.key))
        ]
        lines += [
            f"From one connection (`wrk -t1 -c1 -d{run.duration}s`):",
            "",
            *table(["report", "req/s", "p50", "p99", "max", "errors"], single_rows),
            "",
        ]
    if stage.page is not None:
        p = stage.page
        lines += [
            f"The dashboard (`{p.path}`) in headless Chromium, {len(p.drawn_ms)} loads each in a new context "
            f"(nothing cached): drawn (load event) in {p.median_ms:.0f} ms median, {p.worst_ms:.0f} ms at worst; "
            f"{p.bytes_loaded:,} bytes loaded in all (HTML, CSS, script).",
            "",
        ]
    return lines


def _verification(run: Run) -> list[str]:
    v = run.verification
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
    check = run.check_output.strip().splitlines()[-1] if run.check_output.strip() else ""
    return [
        "## Sales stored = sales acknowledged",
        "",
        *table(["", ""], rows),
        "",
        f"Result: **{'passed' if v.passed else 'FAILED'}**: {verdict}.",
        "",
        "## `python -m salesreport check`",
        "",
        f"Exit code {run.check_code} ({'passed' if run.check_code == 0 else 'FAILED'}): `{check}`",
        "",
        f"Server log: {run.server_log_problems} lines at warning level or worse (`bench/out/server.log`).",
        "",
    ]


def _soak(soak: Soak) -> list[str]:
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
        f"## Soak: POST of one sale for {soak.seconds} s",
        "",
        f"{count(r.rps)} req/s, p50 {ms(r.p50_ms)}, p99 {ms(r.p99_ms)}, errors {r.describe_errors()}; "
        f"RSS sampled every {soak.interval:g} s from /proc/PID/status (VmRSS).",
        "",
        *table(["process", "RSS at start (MiB)", "peak (MiB)", "end (MiB)", "end − start (MiB)"], rows),
        "",
    ]


def render(run: Run) -> str:
    lines = _header(run) + _ceilings(run) + _targets(run)
    for stage in run.stages:
        lines += _stage(run, stage)
    lines += _verification(run)
    if run.soak:
        lines += _soak(run.soak)
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
