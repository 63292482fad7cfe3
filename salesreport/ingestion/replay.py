"""When a sale repeats one stored before: the one replay rule, and how long a key lives.

A POS sends each sale with an idempotency key, unique per store. A sale sent
again with a key that is alive is a *replay*, answered with the sale as first
stored (200), if it is the same sale; otherwise the key is taken (422). The
rule is the same for a repeat inside one array, for two requests of one batch,
and for a sale stored long before: every one of them is decided here.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from ..schemas import FieldError, ReturnIn, SaleIn, parse_money


def is_replay(first: Mapping[str, Any], sale: SaleIn) -> bool:
    """Whether ``sale`` is the same sale as ``first``, the sale stored (or being
    stored) under the same store and key.

    The same product and quantity; if ``sale`` gives ``sold_at``, the same
    instant as ``first`` — for a first sale sent without one, the instant it
    arrived; and if it gives ``unit_price``, the same price charged. A repeat
    without ``sold_at`` (or ``unit_price``) matches any instant (or price).
    """
    return (
        first["product_id"] == sale.product_id
        and first["quantity"] == sale.quantity
        and (sale.sold_at is None or first["sold_at"] == sale.sold_at)
        and (sale.unit_price is None or first["unit_price"] == parse_money(sale.unit_price))
    )


def is_return_replay(first: Mapping[str, Any], item: ReturnIn) -> bool:
    """Whether ``item`` is the same return as ``first`` (stored, or being stored,
    under the same store and key): the same rule as for sales. The same sale
    and quantity; if it gives ``returned_at``, the same instant."""
    return (
        first["sale_id"] == item.sale_id
        and first["quantity"] == item.quantity
        and (item.returned_at is None or first["returned_at"] == item.returned_at)
    )


def live_after(now: datetime, lifetime: timedelta) -> datetime:
    """Keys of sales received before this instant have expired: they may be used again. (The lookups
    say the same in SQL: ``received_at >= live_after``.)"""
    return now - lifetime


def is_live(received_at: datetime, now: datetime, lifetime: timedelta) -> bool:
    """Whether a key received at ``received_at`` still names its sale (or return) at ``now``."""
    return received_at >= live_after(now, lifetime)


def conflict(index: int | None, what: str = "sale") -> FieldError:
    return FieldError(
        field="idempotency_key", index=index, message=f"already used for a different {what} of this store"
    )
