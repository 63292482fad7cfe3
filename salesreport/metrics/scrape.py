"""A worker's life and the scrape: the multi-process files, and the text ``GET /metrics`` answers."""

from __future__ import annotations

import contextlib
import fcntl
import glob
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from . import counts
from .counts import MULTIPROC_DIR, flush_requests

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

_LIVE_FILE = re.compile(r"gauge_live\w+_(\d+)\.db$")


def worker_started() -> None:
    """Forget the live gauges of workers of this server that died without saying so (killed)."""
    path = os.environ.get(MULTIPROC_DIR)
    if not path:
        return
    from prometheus_client import multiprocess

    for name in glob.glob(os.path.join(path, "gauge_live*.db")):
        found = _LIVE_FILE.search(name)
        if found and not _alive(int(found.group(1))):
            multiprocess.mark_process_dead(int(found.group(1)), path)  # type: ignore[no-untyped-call]


def worker_stopped() -> None:
    """Write what is counted, and take this worker's live gauges (queue depth, pools) out of the
    sums: it serves no more."""
    flush_requests()
    if counts._metrics is not None and counts._metrics.multiprocess:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(os.getpid())  # type: ignore[no-untyped-call]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def exposition() -> tuple[bytes, str]:
    """The scrape: every worker's samples (multi-process mode) or this process's, and their content type
    (blocking I/O, run off the event loop: call ``flush_requests`` first, on it)."""
    from prometheus_client import CONTENT_TYPE_PLAIN_0_0_4, generate_latest

    m = counts._get()
    registry: CollectorRegistry = m.registry
    if m.multiprocess:
        from prometheus_client import CollectorRegistry
        from prometheus_client.multiprocess import MultiProcessCollector

        registry = CollectorRegistry()
        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    return generate_latest(registry), CONTENT_TYPE_PLAIN_0_0_4


_PREFIX = "salesreport-metrics-"


# The files prometheus-client writes in multi-process mode: <type>[_<gauge mode>]_<pid>.db.
_SAMPLE_FILE = re.compile(r"(counter|histogram|summary|gauge_(live)?(all|min|max|sum|mostrecent))_[0-9]+\.db")


def _plain_file(path: Path) -> bool:
    return path.is_file() and not path.is_symlink()


@contextlib.contextmanager
def _held(path: Path) -> Iterator[None]:
    """Hold ``path`` for this server (a lock on the directory itself, let go when the process ends, however
    it ends): another server given the same directory would empty it of this one's samples, and each
    server's scrape would then count the other's requests."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise SystemExit(
                f"{MULTIPROC_DIR} {path} is in use by another server: give each server a directory of its own"
            ) from None
        yield
    finally:
        os.close(fd)


@contextlib.contextmanager
def shared_directory() -> Iterator[Path]:
    """For ``serve``, around the server: the directory its workers write their samples to.

    ``PROMETHEUS_MULTIPROC_DIR`` if set (emptied of samples first, since a counter left by an earlier
    run would be added to this one's), else a new directory, removed when the server stops (and, if
    the server was killed, by the next ``serve`` on this machine). The workers inherit it through
    the environment.
    """
    if "prometheus_client" in sys.modules:
        raise RuntimeError("prometheus_client was imported before serve set its directory")
    configured = os.environ.get(MULTIPROC_DIR)
    if configured:
        path = Path(configured)
        path.mkdir(parents=True, exist_ok=True)
        others = sorted(p.name for p in path.iterdir() if not (_SAMPLE_FILE.fullmatch(p.name) and _plain_file(p)))
        if others:
            # The scrape reads every *.db file there, and the start removes old samples: nothing else belongs.
            raise SystemExit(
                f"{MULTIPROC_DIR} must be a directory of its own; {path} holds {', '.join(others[:3])}"
                + (f" and {len(others) - 3} more" if len(others) > 3 else "")
            )
        with _held(path):
            for old in path.iterdir():
                old.unlink()
            yield path
        return
    for old in Path(tempfile.gettempdir()).glob(f"{_PREFIX}*-*"):
        pid = old.name[len(_PREFIX) :].partition("-")[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(old, ignore_errors=True)
    path = Path(tempfile.mkdtemp(prefix=f"{_PREFIX}{os.getpid()}-"))
    os.environ[MULTIPROC_DIR] = str(path)
    try:
        yield path
    finally:
        del os.environ[MULTIPROC_DIR]
        shutil.rmtree(path, ignore_errors=True)
