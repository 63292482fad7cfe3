"""HAProxy in front of the test hosts, configured by deploy/haproxy.cfg itself.

The example's ``bind``, ``server`` and ``default-server`` lines are replaced by the
test's address, hosts and short check intervals; everything else (timeouts, retries,
the health check) is run as committed. A stats socket tells the test what HAProxy
thinks of each host.
"""

from __future__ import annotations

import contextlib
import csv
import io
import os
import shutil
import signal
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path

from tests.conftest import ROOT

HAPROXY = shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin:/sbin")
EXAMPLE = ROOT / "deploy" / "haproxy.cfg"
REPLACED = ("bind ", "default-server ", "server ")


def render(bind: str, servers: dict[str, str], checks: str) -> str:
    """deploy/haproxy.cfg bound to ``bind``, with ``servers`` (name: address:port) checked as ``checks`` says."""
    lines, seen = [], set()
    for line in EXAMPLE.read_text(encoding="utf-8").splitlines():
        directive = next((d for d in REPLACED if line.strip().startswith(d)), None)
        if directive == "server ":
            if directive not in seen:
                lines += [f"    server {name} {address} check" for name, address in servers.items()]
        elif directive == "bind ":
            lines.append(f"    bind {bind}")
        elif directive == "default-server ":
            lines.append(f"    default-server {checks}")
        else:
            lines.append(line)
        if directive:
            seen.add(directive)
    assert seen == set(REPLACED), f"{EXAMPLE} has no {set(REPLACED) - seen} line to replace"
    return "\n".join(lines) + "\n"


@dataclass
class Balancer:
    directory: Path
    port: int
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def socket_path(self) -> Path:
        return self.directory / "haproxy.sock"

    @property
    def log_path(self) -> Path:
        return self.directory / "haproxy.log"

    def start(self, servers: dict[str, str], checks: str) -> None:
        assert HAPROXY is not None
        local = self.directory / "global.cfg"
        local.write_text(
            f"global\n    log stdout format raw local0\n    stats socket {self.socket_path} mode 600 level admin\n",
            encoding="utf-8",
        )
        config = self.directory / "haproxy.cfg"
        config.write_text(render(f"127.0.0.1:{self.port}", servers, checks), encoding="utf-8")
        with self.log_path.open("wb") as out:
            self.proc = subprocess.Popen(
                [HAPROXY, "-db", "-f", str(local), "-f", str(config)],
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def log(self, lines: int = 30) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def states(self) -> dict[str, str]:
        """Each server's status as HAProxy's health checks see it ("UP", "DOWN", "UP 1/2"…); {} before it runs."""
        assert self.proc is not None
        assert self.proc.poll() is None, f"haproxy exited with {self.proc.returncode}:\n{self.log()}"
        try:
            with socket.socket(socket.AF_UNIX) as sock:
                sock.settimeout(2)
                sock.connect(str(self.socket_path))
                sock.sendall(b"show stat\n")
                data = b""
                while chunk := sock.recv(65536):
                    data += chunk
        except (FileNotFoundError, ConnectionRefusedError):
            return {}
        rows = csv.DictReader(io.StringIO(data.decode().removeprefix("# ")))
        return {row["svname"]: row["status"] for row in rows if row["svname"] not in ("FRONTEND", "BACKEND")}

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
