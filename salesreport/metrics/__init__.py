"""Prometheus metrics: what each worker counts (``counts``), and the text that ``GET /metrics`` answers
(``scrape``).

Under ``serve`` every worker writes its samples to files in one directory of the server
(prometheus-client's multi-process mode, ``PROMETHEUS_MULTIPROC_DIR``), and a scrape, whichever
worker answers it, reads all of them. Without that directory (an app run in-process, as the tests
do) the process's own registry is what a scrape shows.

prometheus-client chooses its mode once, when it is first imported, from that variable; Granian
forks the workers from the ``serve`` process, so that process must not import it before the
directory is set (``shared_directory``). Hence this package imports it only when a worker records
its first sample: any module may import this one.

Labels are bounded: a request is counted under its route's template (``/sales/{id}``), never its
path, and under one of a few methods. Each label combination's child is looked up once and
kept; a request's counts are written once per turn of the event loop (``record_request``).
"""

from .counts import (
    MULTIPROC_DIR,
    REJECTIONS,
    UNMATCHED,
    WRITERS,
    WriterMetrics,
    count_read_fallback,
    flush_requests,
    key_rejected,
    poll_held,
    record_request,
    set_replica_lag,
    watch_pools,
)
from .scrape import exposition, shared_directory, worker_started, worker_stopped

__all__ = [
    "MULTIPROC_DIR",
    "REJECTIONS",
    "UNMATCHED",
    "WRITERS",
    "WriterMetrics",
    "count_read_fallback",
    "exposition",
    "flush_requests",
    "key_rejected",
    "poll_held",
    "record_request",
    "set_replica_lag",
    "shared_directory",
    "watch_pools",
    "worker_started",
    "worker_stopped",
]
