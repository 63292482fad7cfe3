"""What a client asks for in an ``Accept``, ``Accept-Language`` or ``Accept-Encoding`` header."""

from __future__ import annotations


def weights(header: str) -> list[tuple[str, float]]:
    """Each entry of an ``Accept*`` header with its weight, in the header's order: ``q`` (1 if not
    given; 0 if it is not a number). An entry is wanted if its weight is above 0 (nan is not)."""
    weighted = []
    for part in header.split(","):
        entry, _, params = part.partition(";")
        quality = 1.0
        for param in params.split(";"):
            name, _, value = param.strip().partition("=")
            if name.strip().lower() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        if entry.strip():
            weighted.append((entry.strip(), quality))
    return weighted


def preferences(header: str) -> list[str]:
    """The wanted entries of an ``Accept*`` header (see ``weights``), most wanted first; equal weights
    keep the header's order."""
    wanted = [(-quality, position, entry) for position, (entry, quality) in enumerate(weights(header)) if quality > 0]
    return [entry for _, _, entry in sorted(wanted)]
