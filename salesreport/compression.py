"""Bodies sent gzip-compressed to the clients that accept it (RFC 9110, ``Accept-Encoding``).

Only bodies that are kept are compressed: a page, a report, the catalog, a static file. Each is
compressed once, for the first client that accepts gzip and asks for it (the requests that come
meanwhile wait for that one compression), and kept beside its plain bytes for as long as the body
itself is kept; every later request sends the kept bytes. A browser's dashboard page shrinks about
five times (15 KB to 3 KB), which the server, the kernel and the network each pay for per request
(see BENCHMARKS.md).
"""

from __future__ import annotations

import asyncio
import functools
import gzip
from typing import TYPE_CHECKING

from starlette.requests import Request

from .accept import weights

if TYPE_CHECKING:  # not at run time: the catalog (imported by ``service``) keeps its lists as ``Encoded``
    from .service import RawHeaders

# Below this, the header and gzip's own frame save too little to be worth a variant.
MIN_SIZE = 1024
# Larger bodies are compressed in a thread (zlib lets go of the GIL), not on the event loop.
THREAD_SIZE = 256 * 1024
LEVEL = 6
# Of the Accept-Encoding value, what is read (as for Accept and Accept-Language): a longer one
# would cost its parsing on every request, and the cache of parsed values its size.
MAX_HEADER = 1000

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
        asks meanwhile waits for that compression (which a request that goes away does not cancel)."""
        if len(self.plain) < THREAD_SIZE:
            self._keep(gzip.compress(self.plain, LEVEL, mtime=0))
            return
        if self._packing is None:
            self._packing = asyncio.ensure_future(self._in_thread())
        await asyncio.shield(self._packing)

    async def _in_thread(self) -> None:
        self._keep(await asyncio.to_thread(gzip.compress, self.plain, LEVEL, mtime=0))

    def _keep(self, packed: bytes) -> None:
        self._gzipped = packed if len(packed) < len(self.plain) else None
        self._packed = True


def accepts_gzip(request: Request) -> bool:
    """Whether the client accepts a gzip-coded body (every ``Accept-Encoding`` header taken together)."""
    values = request.headers.getlist("accept-encoding")
    if not values:
        return False
    return _gzip_acceptable((values[0] if len(values) == 1 else ",".join(values))[:MAX_HEADER])


@functools.lru_cache(maxsize=256)  # a few header values are sent by nearly every client
def _gzip_acceptable(header: str) -> bool:
    """``gzip`` (or ``x-gzip``) wanted, or not named at all and ``*`` wanted (RFC 9110, 12.5.3)."""
    named = star = False
    for entry, quality in weights(header):
        coding = entry.lower()
        if coding in ("gzip", "x-gzip"):
            if quality > 0:
                return True
            named = True
        elif coding == "*":
            star = star or quality > 0
    return star and not named
