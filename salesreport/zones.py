"""IANA time zones, from the pinned ``tzdata`` package only.

The operating system's zone files are not consulted: the importer and every
server then agree on which zones exist, whatever machine each runs on.
"""

from __future__ import annotations

import zoneinfo
from functools import lru_cache

zoneinfo.reset_tzpath(to=())


@lru_cache(maxsize=1024)
def zone(name: str) -> zoneinfo.ZoneInfo:
    """The zone called ``name``; ValueError if there is none."""
    try:
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError) as exc:
        raise ValueError(f"not a time zone this server knows: {name!r}") from exc
