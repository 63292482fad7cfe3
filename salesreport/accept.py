"""What a client asks for in an ``Accept`` or ``Accept-Language`` header."""

from __future__ import annotations


def preferences(header: str) -> list[str]:
    """The entries of an ``Accept*`` header, most wanted first; ``q=0`` (or a ``q`` that is not a
    number) means not wanted, and equal weights keep the header's order."""
    weighted = []
    for position, part in enumerate(header.split(",")):
        entry, _, params = part.partition(";")
        quality = 1.0
        for param in params.split(";"):
            name, _, value = param.strip().partition("=")
            if name.strip().lower() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        if entry.strip() and quality > 0:  # nan is not > 0
            weighted.append((-quality, position, entry.strip()))
    return [entry for _, _, entry in sorted(weighted)]
