"""What a client asks for in an ``Accept``, ``Accept-Language`` or ``Accept-Encoding`` header."""

from __future__ import annotations

from collections.abc import Sequence


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


def choose(header: str, offers: Sequence[str]) -> str | None:
    """The offer (a media type) that an ``Accept`` header prefers, or None if it accepts none.

    Each offer takes the weight of the most specific range that names it (``type/subtype`` over
    ``type/*`` over ``*/*``, RFC 9110 12.5.1), so ``text/*, text/csv;q=0`` refuses CSV; the highest
    weight above 0 wins; on a tie, the offer whose range came first in the header, then the first offer.
    """
    entries = [(entry.lower(), quality) for entry, quality in weights(header)]
    ranked = []
    for index, offer in enumerate(offers):
        ranges = {offer: 3, f"{offer.partition('/')[0]}/*": 2, "*/*": 1}
        match = None  # (specificity, weight, position)
        for position, (entry, quality) in enumerate(entries):
            specificity = ranges.get(entry, 0)
            if specificity and (match is None or specificity > match[0]):
                match = (specificity, quality, position)
        if match is not None and match[1] > 0:
            ranked.append((-match[1], match[2], index, offer))
    return min(ranked)[3] if ranked else None
