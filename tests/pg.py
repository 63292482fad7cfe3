"""A throwaway PostgreSQL cluster, started from the server binaries for the tests."""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path


def find_bindir() -> Path | None:
    candidates = []
    if shutil.which("pg_config"):
        out = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True, check=False).stdout.strip()
        candidates.append(out)
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)
    for candidate in candidates:
        if candidate and (Path(candidate) / "initdb").exists() and (Path(candidate) / "pg_ctl").exists():
            return Path(candidate)
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Cluster:
    bindir: Path
    root: Path
    port: int
    listen: tuple[str, ...] = ("127.0.0.1",)

    @property
    def datadir(self) -> Path:
        return self.root / "data"

    def url(self, database: str = "postgres", host: str = "127.0.0.1") -> str:
        return f"postgresql://postgres@{host}:{self.port}/{database}"

    def _cmd(self, *args: str) -> list[str]:
        # initdb and postgres refuse to run as root: run them as postgres.
        if os.geteuid() == 0:
            return ["runuser", "-u", "postgres", "--", *args]
        return list(args)

    def run(self, *args: str) -> None:
        subprocess.run(self._cmd(*args), check=True, capture_output=True)

    def start(self) -> None:
        self.run(
            str(self.bindir / "pg_ctl"),
            "-D", str(self.datadir),
            "-l", str(self.root / "log"),
            "-w",
            "-o", f"-p {self.port} -k {self.root} -c listen_addresses={','.join(self.listen)} "
            "-c fsync=off -c max_connections=200",
            "start",
        )  # fmt: skip

    def stop(self, mode: str = "fast") -> None:
        self.run(str(self.bindir / "pg_ctl"), "-D", str(self.datadir), "-m", mode, "-w", "stop")

    def psql(self, sql: str, database: str = "postgres") -> None:
        self.run(
            str(self.bindir / "psql"),
            "-h",
            "127.0.0.1",
            "-p",
            str(self.port),
            "-U",
            "postgres",
            "-d",
            database,
            "-qc",
            sql,
        )


def create(bindir: Path, *, reachable_from: tuple[str, str] | None = None) -> Cluster:
    """A new cluster on 127.0.0.1; with ``reachable_from=(address, network)`` it also listens on
    ``address`` (of this machine) and trusts clients of ``network`` (CIDR), such as test hosts."""
    root = Path(tempfile.mkdtemp(prefix="salesreport-pg-"))
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
    listen = ("127.0.0.1", reachable_from[0]) if reachable_from else ("127.0.0.1",)
    cluster = Cluster(bindir, root, free_port(), listen)
    cluster.run(str(bindir / "initdb"), "-D", str(cluster.datadir), "-U", "postgres", "--auth=trust", "-E", "UTF8")
    if reachable_from:
        with (cluster.datadir / "pg_hba.conf").open("a") as hba:
            hba.write(f"host all all {reachable_from[1]} trust\n")
    cluster.start()
    return cluster


def destroy(cluster: Cluster) -> None:
    try:
        cluster.stop("immediate")
    finally:
        shutil.rmtree(cluster.root, ignore_errors=True)
