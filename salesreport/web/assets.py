"""Static files, served from memory under names that carry a hash of their content, cached for a year."""

from __future__ import annotations

import hashlib
from pathlib import Path

from starlette.requests import Request
from starlette.responses import Response

from ..problems import ProblemError

_DIR = Path(__file__).parent / "static"
_TYPES = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8"}


def _load() -> tuple[dict[str, str], dict[str, tuple[bytes, str]]]:
    urls: dict[str, str] = {}
    files: dict[str, tuple[bytes, str]] = {}
    for path in sorted(_DIR.iterdir()):
        if path.suffix not in _TYPES:
            continue
        body = path.read_bytes()
        hashed = f"{path.stem}.{hashlib.sha256(body).hexdigest()[:12]}{path.suffix}"
        urls[path.name] = f"/static/{hashed}"
        files[hashed] = (body, _TYPES[path.suffix])
    return urls, files


URLS, _FILES = _load()


async def static(request: Request) -> Response:
    found = _FILES.get(request.path_params["name"])
    if found is None:
        raise ProblemError(404, "Not Found", "no such file")
    body, media_type = found
    return Response(
        body,
        media_type=media_type,
        headers={"Cache-Control": "public, max-age=31536000, immutable", "X-Content-Type-Options": "nosniff"},
    )
