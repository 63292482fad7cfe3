"""Bodies sent gzip-compressed to the clients that accept it (RFC 9110, ``Accept-Encoding``).

Only bodies that are kept are compressed: a page, a report, the catalog, a static file. Each is
compressed once, the first time a client that accepts gzip asks for it, and kept beside its plain
bytes for as long as the body itself is kept, so that a request never pays for compression. A
browser's dashboard page shrinks about five times (15 KB to 3 KB), which the server, the kernel and
the network each pay for per request (see BENCHMARKS.md).
"""

from __future__ import annotations

import asyncio
import functools
import gzip

from starlette.requests import Request

from .accept import weights
from .service import RawHeaders

# Below this, the header and gzip's own frame save too little to be worth a variant.
MIN_SIZE = 1024
# Larger bodies are compressed in a thread (zlib lets go of the GIL), not on the event loop.
THREAD_SIZE = 256 * 1024
LEVEL = 6

GZIP: RawHeaders = [(b"content-encoding", b"gzip"), (b"vary", b"accept-encoding")]
PLAIN: RawHeaders = [(b"vary", b"accept-encoding")]
# For a response whose own headers name Accept-Encoding in their Vary.
_GZIP_ONLY: RawHeaders = GZIP[:1]


class Encoded:
    """A body as it is, and its gzip encoding once a client asked for one (never, if it does not pay)."""

    __slots__ = ("_gzipped", "_tried", "plain")

    def __init__(self, plain: bytes) -> None:
        self.plain = plain
        self._gzipped: bytes | None = None
        self._tried = False

    async def choose(self, request: Request, *, vary: bool = True) -> tuple[bytes, RawHeaders]:
        """The bytes to send to ``request``'s client and the headers that say what they are.

        A body too small to compress is sent as it is, and did not depend on ``Accept-Encoding``;
        any other says it did (``Vary``, unless ``vary`` is false: the caller's headers say it), so
        that a shared cache never hands gzip to a client that did not ask for it.
        """
        if len(self.plain) < MIN_SIZE:
            return self.plain, []
        if accepts_gzip(request):
            if not self._tried:
                await self._compress()
            if self._gzipped is not None:
                return self._gzipped, GZIP if vary else _GZIP_ONLY
        return self.plain, PLAIN if vary else []

    async def _compress(self) -> None:
        plain = self.plain
        if len(plain) >= THREAD_SIZE:
            packed = await asyncio.to_thread(gzip.compress, plain, LEVEL, mtime=0)
        else:
            packed = gzip.compress(plain, LEVEL, mtime=0)
        # Two requests may have compressed it at once: the same bytes either way.
        self._gzipped = packed if len(packed) < len(plain) else None
        self._tried = True


def accepts_gzip(request: Request) -> bool:
    """Whether the client accepts a gzip-coded body (every ``Accept-Encoding`` header taken together)."""
    values = request.headers.getlist("accept-encoding")
    if not values:
        return False
    return _gzip_acceptable(values[0] if len(values) == 1 else ",".join(values))


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


class Latest:
    """The ``Encoded`` of the last body seen under each name, for bodies kept elsewhere as plain bytes
    (the catalog's): compressed again only when the body is a new one."""

    def __init__(self) -> None:
        self._kept: dict[str, Encoded] = {}

    def get(self, name: str, body: bytes) -> Encoded:
        kept = self._kept.get(name)
        if kept is None or kept.plain is not body:
            kept = self._kept[name] = Encoded(body)
        return kept
