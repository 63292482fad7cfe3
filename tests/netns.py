"""Test hosts as Linux network namespaces on one private /24, for the several-hosts tests (root only).

A bridge in the root namespace holds the network's first address (``.1``: where the
PostgreSQL primary and HAProxy are reached); each host is a namespace with its own
loopback and one end of a veth pair on the bridge, at ``.2``, ``.3``, … Names carry
this process's id and the /24 is one that no interface of the machine uses, so that
test runs side by side do not meet. ``destroy`` removes everything ``create`` made,
also when ``create`` failed half-way.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import subprocess
from dataclasses import dataclass, field

IP = shutil.which("ip") or shutil.which("ip", path="/usr/sbin:/sbin")
# 10.231.0.0/16 is this suite's; each run takes a /24 of it that is free on this machine.
SPACE = ipaddress.IPv4Network("10.231.0.0/16")


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
