"""Which catalog price is in force at an instant: the one rule, for the writer, the catalog's lists and ``import``.

A product's history is its prices in the order they take effect. The first
takes effect at ``db.BEGINNING`` (before any sale can be dated): it has no
start. Each later price is in force from its instant until the next one's.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Sequence
from datetime import datetime

# (effective_from, price in minor units), ascending by instant.
History = Sequence[tuple[datetime, int]]


def price_at(history: History, instant: datetime) -> int:
    """The price in force at ``instant`` (the first price for any earlier instant)."""
    if len(history) == 1:
        return history[0][1]
    i = bisect_right(history, instant, key=lambda entry: entry[0])
    return history[max(i - 1, 0)][1]


def next_change(history: History, instant: datetime) -> datetime | None:
    """When the price in force at ``instant`` next changes, if a change is scheduled."""
    i = bisect_right(history, instant, key=lambda entry: entry[0])
    return history[i][0] if i < len(history) else None
