"""Bodies sent gzip-compressed to the clients that accept it (RFC 9110, ``Accept-Encoding``).

Only bodies that are kept are compressed: a page, a report, the catalog, a static file. Each is
compressed once, for the first client that accepts gzip and asks for it (the requests that come
meanwhile wait for that one compression), and kept beside its plain bytes for as long as the body
itself is kept; every later request sends the kept bytes. A body that could not be compressed is
sent plain. A browser's dashboard page shrinks about five times (15 KB to 3 KB), which the server,
the kernel and the network each pay for per request (BENCHMARKS.md, "eighth part").
"""

from __future__ import annotations

import asyncio
import functools
import gzip
from typing import TYPE_CHECKING

import structlog
from starlette.requests import Request

from .accept import weights
from .headers import joined

if TYPE_CHECKING:  # not at run time: the catalog (imported by ``service``) keeps its lists as ``Encoded``
    from .service import RawHeaders

log = structlog.get_logger("salesreport.compression")

# Below this, the header and gzip's own frame save too little to be worth a variant.
MIN_SIZE = 1024
# Larger bodies are compressed in a thread (zlib lets go of the GIL), not on the event loop: about
# half a millisecond of the loop's time for 64 KB of JSON.
THREAD_SIZE = 64 * 1024
LEVEL = 6

GZIP: RawHeaders = [(b"content-encoding", b"gzip"), (b"vary", b"accept-encoding")]
PLAIN: RawHeaders = [(b"vary", b"accept-encoding")]
# For a response whose own headers name Accept-Encoding in their Vary.
_GZIP_ONLY: RawHeaders = GZIP[:1]


class Encoded:
    """A body as it is, and its gzip encoding once a client asked for one (never, if it does not pay)."""

    __slots__ = ("_gzipped", "_packed", "_packing", "plain")

    def __init__(self, plain: bytes) -> None:
        self.plain = plain
        self._gzipped: bytes | None = None
        self._packed = False
        self._packing: asyncio.Future[None] | None = None  # a compression in a thread, under way or done

    @property
    def vary(self) -> RawHeaders:
        """The ``Vary`` of this body's responses (a 304 for it too): none for a body too small to compress."""
        return PLAIN if len(self.plain) >= MIN_SIZE else []

    async def choose(self, request: Request, *, vary: bool = True) -> tuple[bytes, RawHeaders]:
        """The bytes to send to ``request``'s client and the headers that say what they are.

        A body too small to compress is sent as it is, and did not depend on ``Accept-Encoding``;
        any other says it did (``Vary``, unless ``vary`` is false: the caller's headers say it), so
        that a shared cache never hands gzip to a client that did not ask for it.
        """
        if len(self.plain) < MIN_SIZE:
            return self.plain, []
        if accepts_gzip(request):
            if not self._packed:
                await self._compress()
            if self._gzipped is not None:
                return self._gzipped, GZIP if vary else _GZIP_ONLY
        return self.plain, PLAIN if vary else []

    async def _compress(self) -> None:
        """Compress the body, once: on the event loop if small, else in a thread, and a request that
        asks meanwhile waits for that compression (which a request that goes away does not cancel;
        one cut short with its event loop is started again)."""
        if len(self.plain) < THREAD_SIZE:
            self._keep(_packed(self.plain))
            return
        loop = asyncio.get_running_loop()
        if self._packing is None or self._packing.cancelled() or self._packing.get_loop() is not loop:
            self._packing = asyncio.ensure_future(self._in_thread())
        await asyncio.shield(self._packing)

    async def _in_thread(self) -> None:
        try:
            packed = await asyncio.to_thread(_packed, self.plain)
        except Exception:  # no thread to be had (shutting down, or none left): sent plain
            log.exception("a body could not be compressed in a thread; it is sent plain", size=len(self.plain))
            packed = None
        self._keep(packed)

    def _keep(self, packed: bytes | None) -> None:
        self._gzipped = packed if packed is not None and len(packed) < len(self.plain) else None
        self._packed = True


def _packed(plain: bytes) -> bytes | None:
    """``plain`` gzip-compressed; None if it cannot be (out of memory): then it is sent as it is."""
    try:
        return gzip.compress(plain, LEVEL, mtime=0)
    except Exception:
        log.exception("a body could not be compressed; it is sent plain", size=len(plain))
        return None


def accepts_gzip(request: Request) -> bool:
    """Whether the client accepts a gzip-coded body (every ``Accept-Encoding`` header taken together)."""
    value = joined(request.scope, b"accept-encoding")
    return bool(value) and _gzip_acceptable(value)


@functools.lru_cache(maxsize=256)  # a few header values are sent by nearly every client
def _gzip_acceptable(value: str) -> bool:
    """``gzip`` (or ``x-gzip``) wanted, or not named at all and ``*`` wanted (RFC 9110, 12.5.3); a
    coding named twice, once with ``q=0``, is refused."""
    named: list[float] = []
    star: list[float] = []
    for entry, quality in weights(value):
        coding = entry.lower()
        if coding in ("gzip", "x-gzip"):
            named.append(quality)
        elif coding == "*":
            star.append(quality)
    chosen = named or star
    return bool(chosen) and all(quality > 0 for quality in chosen)
