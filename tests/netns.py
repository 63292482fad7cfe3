"""Test hosts as Linux network namespaces on one private /24, and the service running on them (root only).

A bridge in the root namespace holds the network's first address (``.1``: where the
PostgreSQL primary and HAProxy are reached); each host is a namespace with its own
loopback and one end of a veth pair on the bridge, at ``.2``, ``.3``, … Names carry
this process's id and the /24 is one that no interface of the machine uses, so that
test runs side by side do not meet. ``destroy`` removes everything ``create`` made,
also when ``create`` failed half-way. A ``Host`` runs ``python -m salesreport serve`` in
its namespace, as production would on a machine of its own.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from tests.conftest import ROOT

IP = shutil.which("ip") or shutil.which("ip", path="/usr/sbin:/sbin")
# 10.231.0.0/16 is this suite's; each run takes a /24 of it that is free on this machine.
SPACE = ipaddress.IPv4Network("10.231.0.0/16")
PORT = 8000  # every host serves on this port of its own address, as deploy/haproxy.cfg shows


def ip(*args: str) -> None:
    assert IP is not None
    done = subprocess.run([IP, *args], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")


def _free_network() -> ipaddress.IPv4Network:
    assert IP is not None
    shown = subprocess.run([IP, "-4", "-o", "addr", "show"], capture_output=True, text=True, check=True).stdout
    used = [ipaddress.IPv4Interface(word).network for word in shown.split() if "/" in word and word[0].isdigit()]
    subnets = list(SPACE.subnets(new_prefix=24))[1:]  # not 10.231.0.0/24
    start = os.getpid() % len(subnets)
    for subnet in subnets[start:] + subnets[:start]:
        if not any(subnet.overlaps(other) for other in used):
            return subnet
    raise RuntimeError(f"no free /24 in {SPACE}")


@dataclass
class Network:
    hosts: int
    tag: str = field(default_factory=lambda: f"sr{os.getpid()}")
    subnet: ipaddress.IPv4Network = field(default_factory=_free_network)
    namespaces: list[str] = field(default_factory=list)
    links: list[str] = field(default_factory=list)  # the root namespace's ends of the veth pairs
    bridge: str | None = None

    @property
    def gateway(self) -> str:
        """The root namespace's address on the network."""
        return str(self.subnet.network_address + 1)

    def address(self, host: int) -> str:
        return str(self.subnet.network_address + 2 + host)

    def run(self, host: int, *argv: str) -> list[str]:
        """``argv`` run inside host ``host``'s namespace."""
        assert IP is not None
        return [IP, "netns", "exec", self.namespaces[host], *argv]

    def create(self) -> Network:
        bridge = f"{self.tag}b"
        ip("link", "add", "name", bridge, "type", "bridge")
        self.bridge = bridge
        ip("addr", "add", f"{self.gateway}/{self.subnet.prefixlen}", "dev", bridge)
        ip("link", "set", bridge, "up")
        for host in range(self.hosts):
            ns, outside, inside = f"{self.tag}h{host}", f"{self.tag}v{host}", f"{self.tag}i{host}"
            ip("netns", "add", ns)
            self.namespaces.append(ns)
            ip("link", "add", outside, "type", "veth", "peer", "name", inside)
            self.links.append(outside)
            ip("link", "set", inside, "netns", ns)
            ip("link", "set", outside, "master", bridge, "up")
            ip("-n", ns, "addr", "add", f"{self.address(host)}/{self.subnet.prefixlen}", "dev", inside)
            ip("-n", ns, "link", "set", inside, "up")
            ip("-n", ns, "link", "set", "lo", "up")
        return self

    def destroy(self) -> None:
        """Remove the veth pairs, the namespaces and the bridge."""
        problems = []
        for link in reversed(self.links):
            try:
                ip("link", "delete", link)  # and its peer, wherever it is
            except RuntimeError as exc:
                problems.append(str(exc))
        self.links.clear()
        for ns in reversed(self.namespaces):
            try:
                ip("netns", "delete", ns)
            except RuntimeError as exc:
                problems.append(str(exc))
        self.namespaces.clear()
        if self.bridge is not None:
            try:
                ip("link", "delete", self.bridge)
            except RuntimeError as exc:
                problems.append(str(exc))
            self.bridge = None
        if problems:
            raise RuntimeError("; ".join(problems))


# --- the service on a host ------------------------------------------------------------------


def run_cli(network: Network, host: int, database_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``python -m salesreport *args`` run on host ``host`` (inside its namespace)."""
    env = {**os.environ, "DATABASE_URL": database_url}
    argv = network.run(host, sys.executable, "-m", "salesreport", *args)
    done = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"{' '.join(args)}: {done.stdout}{done.stderr}"
    return done


@dataclass
class Host:
    name: str
    index: int
    network: Network
    database_url: str
    directory: Path
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0

    @property
    def address(self) -> str:
        return self.network.address(self.index)

    @property
    def url(self) -> str:
        return f"http://{self.address}:{PORT}"

    @property
    def log_path(self) -> Path:
        return self.directory / f"{self.name}-{self.starts}.log"

    def start(self) -> None:
        """Serve with 2 workers inside the host's namespace; each start logs to a file of its own."""
        self.starts += 1
        argv = [sys.executable, "-m", "salesreport", "serve", "--host", self.address, "--port", str(PORT)]
        env = {**os.environ, "DATABASE_URL": self.database_url, "SALESREPORT_LOG_FORMAT": "json"}
        with self.log_path.open("wb") as out:
            self.proc = subprocess.Popen(
                self.network.run(self.index, *argv, "--workers", "2"),
                cwd=ROOT,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def kill(self) -> None:
        """SIGKILL the server's main process and its workers at once."""
        assert self.proc is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)

    def log(self, lines: int = 30) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def served(self, method: str, path: str) -> int:
        """How many requests this start of the server has answered (its access log)."""
        count = 0
        for line in self.log_path.read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                entry = json.loads(line)
                count += isinstance(entry, dict) and entry.get("method") == method and entry.get("path") == path
        return count

    async def ready(self) -> bool:
        assert self.proc is not None
        assert self.proc.poll() is None, f"{self.name} exited with {self.proc.returncode}:\n{self.log()}"
        async with httpx.AsyncClient(timeout=2) as http:
            with contextlib.suppress(httpx.TransportError):
                return (await http.get(f"{self.url}/health/ready")).status_code == 200
        return False
