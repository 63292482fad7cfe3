"""Static files, served from memory under names that carry a hash of their content, cached for a year."""

from __future__ import annotations

import hashlib
from pathlib import Path

from starlette.requests import Request
from starlette.responses import Response

from ..compression import Encoded
from ..problems import ProblemError
from ..service import RawHeaders, encode_headers, respond

_DIR = Path(__file__).parent / "static"
_HEADERS = {"Cache-Control": "public, max-age=31536000, immutable", "X-Content-Type-Options": "nosniff"}
_TYPES = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8"}


def _load() -> tuple[dict[str, str], dict[str, tuple[Encoded, RawHeaders]]]:
    urls: dict[str, str] = {}
    files: dict[str, tuple[Encoded, RawHeaders]] = {}
    for path in sorted(_DIR.iterdir()):
        if path.suffix not in _TYPES:
            continue
        body = path.read_bytes()
        hashed = f"{path.stem}.{hashlib.sha256(body).hexdigest()[:12]}{path.suffix}"
        urls[path.name] = f"/static/{hashed}"
        files[hashed] = (Encoded(body), encode_headers({"Content-Type": _TYPES[path.suffix], **_HEADERS}))
    return urls, files


URLS, _FILES = _load()


async def static(request: Request) -> Response:
    found = _FILES.get(request.path_params["name"])
    if found is None:
        raise ProblemError(404, "Not Found", "no such file")
    kept, headers = found
    body, coding = await kept.choose(request)
    return respond(body, 200, headers, coding)
