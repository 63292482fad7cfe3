"""What every request of a worker shares: settings, database, catalog, writer, keys, clock, and its reads."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable, Hashable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

from sqlalchemy.ext.asyncio import AsyncConnection
from starlette.requests import Request
from starlette.responses import Response

from . import config, db, headers
from .auth import KeyRing
from .cache import Cache
from .db.replica import Reads, Source
from .ingestion import Batcher, Catalog
from .problems import ProblemError, database_errors
from .timeouts import within
from .web.views import SETTLE_SECONDS

T = TypeVar("T")

# Headers as an ASGI response carries them: lower-case names, bytes.
RawHeaders = list[tuple[bytes, bytes]]


@dataclass
class Service:
    settings: config.Settings
    db: db.Database
    catalog: Catalog
    batcher: Batcher
    # The writer of returns: a batcher of its own, beside the sales'.
    returns: Batcher
    keys: KeyRing
    # The Alembic revision this code expects the database at.
    head_revision: str
    # Which database reads go to: the replica or the primary.
    reads: Reads
    # The wall clock, injectable: tests pin it to any instant (a month's last minute, a DST change).
    clock: Callable[[], datetime] = lambda: datetime.now(UTC)
    draining: bool = False
    # The reports' encoded answers, and the dashboard's rendered pages, kept while their data is unchanged.
    reports: Cache[Any] = field(init=False)
    pages: Cache[Any] = field(init=False)
    # The readiness probe under way, if any (see ``health``).
    readiness: asyncio.Task[str | None] | None = None

    def __post_init__(self) -> None:
        self.reports = Cache(self.clock, replayed=lambda: self.reads.replayed)
        self.pages = Cache(self.clock, replayed=lambda: self.reads.replayed, settle=SETTLE_SECONDS)

    def wake(self) -> None:
        """Wake the requests that wait for news (the dashboards' live polls): the worker begins to drain."""
        self.catalog.changes.wake()


def service(request: Request) -> Service:
    svc: Service | None = request.scope.get("salesreport.service")  # set by ``front.Front``
    if svc is None:
        svc = request.scope["salesreport.service"] = request.app.state.service
    return svc


async def read(
    request: Request,
    work: Callable[[AsyncConnection], Awaitable[T]],
    *,
    own_writes: bool = False,
    snapshot: bool = False,
) -> tuple[T, Source]:
    """Run ``work`` on a read connection (see ``db.replica.Reads.read``); a database that cannot be
    reached answers 503."""
    with database_errors("read failed"):
        return await service(request).reads.read(work, own_writes=own_writes, snapshot=snapshot)


async def receive_body(request: Request, limit: int, too_large: Callable[[], ProblemError], what: str) -> bytes:
    """The request's body, read straight from ``receive``: at most ``limit`` bytes (``too_large()``
    beyond, or at once if its Content-Length says so), all of it within the body timeout (408
    otherwise, naming ``what``); 400 if Content-Length is not a number of bytes, or if the body ends before
    it is whole (a client gone, a malformed chunk).

    A body of a known length is complete once that many bytes came: Granian ends every body with
    a message of its own, and waiting for it is a round trip to its Rust side (a tenth of a
    millisecond for a lone POST, see BENCHMARKS.md).
    """
    header, transfer_encoding = headers.first(request.scope, b"content-length", b"transfer-encoding")
    length = None
    if header is not None:
        if not (header.isascii() and header.isdigit()):
            raise ProblemError(400, "Bad Request", "Content-Length must be a number of bytes")
        digits = header.lstrip("0") or "0"  # HTTP allows leading zeros; int() takes 4300 digits at most
        if len(digits) > len(str(limit)) or int(digits) > limit:
            raise too_large()
        length = int(digits)
        if transfer_encoding is not None:  # the body is framed by its chunks, not by its length
            length = None
    chunks = []
    size = 0
    timeout = service(request).settings.body_timeout
    receive = request.receive
    try:
        with within(timeout):
            while True:
                message = await receive()
                if message["type"] != "http.request":
                    # The body ended before it was whole: the client went away (then nobody reads this),
                    # or the server could not read its framing (a malformed chunk: the client does). Its
                    # fault, not the service's: not a 500, nor logged as an unhandled error.
                    raise ProblemError(400, "Bad Request", f"the {what} ended before it was complete")
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > limit:
                    raise too_large()
                chunks.append(chunk)
                if size == length or not message.get("more_body", False):
                    break
    except TimeoutError:
        raise ProblemError(408, "Request Timeout", f"the {what} did not arrive within {timeout:g} s") from None
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def cached(
    request: Request,
    cache: Cache[T],
    key: Hashable,
    work: Callable[[], Awaitable[tuple[T, Source]]],
    *,
    settled: bool = True,
) -> tuple[T, Source]:
    """``work``'s value (a read and what is made of it) from ``cache`` while the data it shows is
    unchanged (see ``cache``); read again otherwise."""
    svc = service(request)
    stamp = await svc.catalog.changes.stamp()
    return await cache.get(_cache_key(svc, key), stamp, work, settled=settled)


async def behind(request: Request, cache: Cache[T], key: Hashable) -> float | None:
    """See ``Cache.behind``: the seconds until an entry kept past a change is read again, if it is."""
    svc = service(request)
    return cache.behind(_cache_key(svc, key), await svc.catalog.changes.stamp())


def _cache_key(svc: Service, key: Hashable) -> Hashable:
    # Reads moving between the replica and the primary change what a read finds: kept apart.
    return key, svc.reads.reports_on_replica


def freshness_headers(svc: Service, source: Source) -> dict[str, str]:
    """How fresh a read's data is: ``X-Data-As-Of`` (everything committed by then is in it, RFC 3339),
    ``X-Data-Lag-Seconds`` (how far behind now, whole seconds) and ``X-Data-Source``
    (``primary`` or ``replica``)."""
    headers = {"X-Data-Source": "replica" if source.replica else "primary"}
    lag = svc.reads.lag(source)
    if source.as_of is not None and lag is not None:
        headers["X-Data-As-Of"] = source.as_of.astimezone(UTC).isoformat(timespec="seconds")
        headers["X-Data-Lag-Seconds"] = str(math.floor(lag))
    return headers


def encode_headers(headers: Mapping[str, str]) -> RawHeaders:
    """Headers encoded as Starlette's ``Response`` encodes a mapping on every request: done once for
    headers that do not change (a page's, a report's kept with its body)."""
    return [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in headers.items()]


def respond(body: bytes, status: int, *headers: RawHeaders) -> Response:
    """A response with headers encoded beforehand, sent as given: the parts must not repeat a name, nor
    hold a Content-Length, which is added here (as Starlette does: none on a 1xx, 204 or 304)."""
    response = Response(body, status)
    for part in headers:
        response.raw_headers.extend(part)
    return response
