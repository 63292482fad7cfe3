"""Running wrk with the bench/ Lua scripts, and reading its results."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import services

BENCH = Path(__file__).resolve().parent
POST_SCRIPT = BENCH / "post.lua"
GET_SCRIPT = BENCH / "get.lua"


@dataclass
class WrkResult:
    requests: int
    duration_s: float
    ok: int  # 2xx answers
    non2xx: int
    socket_errors: dict[str, int]  # connect, read, write, timeout
    statuses: dict[int, int]
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    sales_per_request: int = 0  # 0 for GETs
    acks: Path | None = None  # acknowledged POST requests, one "request-id<TAB>sales" line each
    # CPU seconds (user + system) the server's process tree used during the run; None if not measured.
    cpu_s: float | None = None
    # When the run began and ended (epoch seconds; None for a pooled result).
    started: float | None = None
    ended: float | None = None
    text: str = field(default="", repr=False)

    @property
    def rps(self) -> float:
        return self.requests / self.duration_s if self.duration_s else 0.0

    @property
    def sales_per_s(self) -> float:
        return self.ok * self.sales_per_request / self.duration_s if self.duration_s else 0.0

    @property
    def cpu_us_per_request(self) -> float | None:
        """Answers counted by wrk; the few left in flight at the cut-off are a rounding error."""
        if self.cpu_s is None or not self.requests:
            return None
        return self.cpu_s * 1e6 / self.requests

    @property
    def cpu_us_per_sale(self) -> float | None:
        per_request = self.cpu_us_per_request
        if per_request is None or not self.sales_per_request:
            return None
        return per_request / self.sales_per_request

    @property
    def errors(self) -> int:
        """Non-2xx answers plus socket errors (wrk's timeouts included)."""
        return self.non2xx + sum(self.socket_errors.values())

    def describe_errors(self) -> str:
        if not self.errors:
            return "0"
        parts = [f"{code}×{n}" for code, n in sorted(self.statuses.items()) if not 200 <= code < 300]
        parts += [f"{kind} {n}" for kind, n in self.socket_errors.items() if n]
        return f"{self.errors} ({', '.join(parts)})"


def pooled(runs: list[WrkResult]) -> WrkResult:
    """Runs of one server and script taken as one: their requests over their time, their CPU over
    their requests. Percentiles cannot be pooled: the pooled result has the worst of the runs'."""
    cpu = [r.cpu_s for r in runs]
    statuses: dict[int, int] = {}
    for r in runs:
        for code, n in r.statuses.items():
            statuses[code] = statuses.get(code, 0) + n
    return WrkResult(
        requests=sum(r.requests for r in runs),
        duration_s=sum(r.duration_s for r in runs),
        ok=sum(r.ok for r in runs),
        non2xx=sum(r.non2xx for r in runs),
        socket_errors={kind: sum(r.socket_errors.get(kind, 0) for r in runs) for kind in runs[0].socket_errors},
        statuses=statuses,
        p50_ms=max(r.p50_ms for r in runs),
        p90_ms=max(r.p90_ms for r in runs),
        p99_ms=max(r.p99_ms for r in runs),
        max_ms=max(r.max_ms for r in runs),
        sales_per_request=runs[0].sales_per_request,
        cpu_s=None if None in cpu else sum(c for c in cpu if c is not None),
    )


def ensure_wrk() -> str:
    """wrk's path; installed with apt-get when missing and running as root (as .ci/run does for PostgreSQL)."""
    path = shutil.which("wrk")
    if path is None and services.apt_install("wrk"):
        path = shutil.which("wrk")
    if path is None:
        raise SystemExit("wrk is needed: install it with `sudo apt-get install wrk` (Debian/Ubuntu)")
    return path


def version(path: str) -> str:
    done = subprocess.run([path, "-v"], capture_output=True, text=True, check=False)
    lines = (done.stdout + done.stderr).splitlines()
    return lines[0].replace("Copyright (C) 2012 Will Glozer", "").strip() if lines else "?"


def run(
    url: str,
    *,
    duration: int,
    connections: int,
    threads: int,
    log_path: Path,
    batch: int = 0,
    prefix: str = "",
    acks: Path | None = None,
    stores: int = 200,
    products: int = 1000,
    headers: Sequence[str] = (),
) -> WrkResult:
    """One wrk run: POST /sales with ``batch`` sales per request, or a GET of ``url`` when batch is 0;
    ``headers`` (``Name: value``) are sent with every request."""
    env = {**os.environ, "BENCH_ACKS": str(acks) if acks else ""}
    if batch:
        env |= {
            "BENCH_BATCH": str(batch),
            "BENCH_PREFIX": prefix,
            "BENCH_STORES": str(stores),
            "BENCH_PRODUCTS": str(products),
        }
    script = POST_SCRIPT if batch else GET_SCRIPT
    argv = [
        ensure_wrk(), f"-t{threads}", f"-c{connections}", f"-d{duration}s", "--latency",
        *(arg for header in headers for arg in ("-H", header)), "-s", str(script), url,
    ]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)
    text = done.stdout + done.stderr
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log_path.write_text(f"$ {' '.join(argv)}\n{text}")
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed ({done.returncode}); see {log_path}:\n{text[-2000:]}")
    result = parse(text)
    result.sales_per_request = batch
    result.acks = acks
    return result


def parse(text: str) -> WrkResult:
    """wrk's output: the BENCH_RESULT line written by common.lua, else wrk's own text."""
    match = re.search(r"^BENCH_RESULT (\{.*\})$", text, re.MULTILINE)
    if match:
        data = json.loads(match.group(1))
        errors = data["errors"]
        return WrkResult(
            requests=data["requests"],
            duration_s=data["duration_us"] / 1e6,
            ok=data["ok"],
            non2xx=data["non2xx"],
            socket_errors={kind: errors[kind] for kind in ("connect", "read", "write", "timeout")},
            statuses={int(code): n for code, n in data["statuses"].items()},
            p50_ms=data["p50_us"] / 1000,
            p90_ms=data["p90_us"] / 1000,
            p99_ms=data["p99_us"] / 1000,
            max_ms=data["max_us"] / 1000,
            text=text,
        )
    return parse_text(text)


_UNITS_MS = {"us": 1e-3, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}


def _ms(value: str) -> float:
    number, unit = re.fullmatch(r"([0-9.]+)([a-z]+)", value).groups()  # type: ignore[union-attr]
    return float(number) * _UNITS_MS[unit]


def parse_text(text: str) -> WrkResult:
    """wrk --latency's human output (used when the Lua done() line is missing)."""

    def find(pattern: str, default: str = "0") -> str:
        match = re.search(pattern, text, re.MULTILINE)
        return match.group(1) if match else default

    requests = int(find(r"^\s*(\d+) requests in"))
    duration_s = _ms(find(r"requests in ([0-9.]+[a-z]+),", "0s")) / 1000
    non2xx = int(find(r"Non-2xx or 3xx responses: (\d+)"))
    socket = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    counts = [int(n) for n in socket.groups()] if socket else [0, 0, 0, 0]
    return WrkResult(
        requests=requests,
        duration_s=duration_s,
        ok=requests - non2xx,
        non2xx=non2xx,
        socket_errors=dict(zip(("connect", "read", "write", "timeout"), counts, strict=True)),
        statuses={},
        p50_ms=_ms(find(r"^\s+50%\s+(\S+)", "0us")),
        p90_ms=_ms(find(r"^\s+90%\s+(\S+)", "0us")),
        p99_ms=_ms(find(r"^\s+99%\s+(\S+)", "0us")),
        max_ms=_ms(find(r"^\s+Latency\s+\S+\s+\S+\s+(\S+)", "0us")),
        text=text,
    )
