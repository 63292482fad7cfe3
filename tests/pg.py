"""A throwaway PostgreSQL cluster, started from the server binaries for the tests."""

from __future__ import annotations

import contextlib
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


def replica_of(primary: Cluster) -> Cluster:
    """A streaming replica of ``primary`` (``pg_basebackup -R``: it follows the primary's WAL), started.

    initdb's defaults allow it: ``wal_level=replica``, ten WAL senders, and ``trust`` for
    replication connections from 127.0.0.1 (see ``create``).
    """
    root = Path(tempfile.mkdtemp(prefix="salesreport-pg-replica-"))
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
    replica = Cluster(primary.bindir, root, free_port())
    replica.run(
        str(primary.bindir / "pg_basebackup"),
        "-h", "127.0.0.1", "-p", str(primary.port), "-U", "postgres",
        "-D", str(replica.datadir), "-R", "-X", "stream", "-c", "fast",
    )  # fmt: skip
    replica.start()
    return replica


def destroy(cluster: Cluster) -> None:
    try:
        cluster.stop("immediate")
    finally:
        shutil.rmtree(cluster.root, ignore_errors=True)


# --- PgBouncer in front of a cluster --------------------------------------------------

PGBOUNCER = "/usr/sbin/pgbouncer"


def find_pgbouncer() -> Path | None:
    found = shutil.which("pgbouncer") or (PGBOUNCER if Path(PGBOUNCER).exists() else None)
    return Path(found) if found else None


@dataclass
class Bouncer:
    """PgBouncer in transaction pooling mode, with a pool small enough that clients really share
    server connections."""

    binary: Path
    root: Path
    port: int
    process: subprocess.Popen[bytes]

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"


def start_bouncer(binary: Path, cluster: Cluster, *, pool_size: int = 4, settings: str = "") -> Bouncer:
    """``settings``: more lines of its ``[pgbouncer]`` section."""
    root = Path(tempfile.mkdtemp(prefix="salesreport-pgbouncer-"))
    port = free_port()
    (root / "userlist.txt").write_text('"postgres" ""\n')
    (root / "pgbouncer.ini").write_text(
        "[databases]\n"
        f"* = host=127.0.0.1 port={cluster.port}\n"
        "[pgbouncer]\n"
        "listen_addr = 127.0.0.1\n"
        f"listen_port = {port}\n"
        "unix_socket_dir =\n"
        "auth_type = trust\n"
        f"auth_file = {root / 'userlist.txt'}\n"
        "pool_mode = transaction\n"
        f"default_pool_size = {pool_size}\n"
        "max_client_conn = 1000\n"
        "server_lifetime = 3600\n"
        f"logfile = {root / 'pgbouncer.log'}\n" + settings
    )
    if os.geteuid() == 0:  # PgBouncer refuses to run as root
        shutil.chown(root, "postgres", "postgres")
        for path in root.iterdir():
            shutil.chown(path, "postgres", "postgres")
    command = cluster._cmd(str(binary), str(root / "pgbouncer.ini"))
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    bouncer = Bouncer(binary, root, port, process)
    for _ in range(500):  # it listens within milliseconds; this bounds a failure only
        if process.poll() is not None:
            log = (root / "pgbouncer.log").read_text() if (root / "pgbouncer.log").exists() else ""
            raise RuntimeError(f"pgbouncer exited with {process.returncode}: {log}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return bouncer
        except OSError:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(0.01)
    stop_bouncer(bouncer)
    raise RuntimeError("pgbouncer did not listen within 5 s")


def stop_bouncer(bouncer: Bouncer) -> None:
    try:
        bouncer.process.terminate()
        bouncer.process.wait(10)
    finally:
        shutil.rmtree(bouncer.root, ignore_errors=True)
