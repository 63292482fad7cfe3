"""A deterministic demo chain: stores in several time zones, products, a year of sales."""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

from .schemas import month_of
from .zones import zone

ZONES = [
    "Europe/Moscow",
    "Europe/Kaliningrad",
    "Asia/Yekaterinburg",
    "Asia/Novosibirsk",
    "Asia/Vladivostok",
    "Europe/Berlin",
    "America/New_York",
    "America/Los_Angeles",
    "Asia/Kolkata",  # UTC+05:30: months that start at half past
    "UTC",
]
STREETS = ["Lenina", "Mira", "Sadovaya", "Pushkina", "Gagarina", "Sovetskaya", "Tverskaya", "Nevsky"]
GOODS = ["Milk", "Bread", "Cheese", "Coffee", "Tea", "Apples", "Rice", "Butter", "Eggs", "Juice"]
KINDS = ["classic", "organic", "family pack", "premium", "light"]


def stores(count: int = 50, seed: int = 1) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    return [
        {
            "id": i,
            "address": f"{rng.choice(STREETS)} st. {rng.randint(1, 200)}, store {i}",
            "timezone": ZONES[i % len(ZONES)],
        }
        for i in range(1, count + 1)
    ]


def products(count: int = 500, seed: int = 2) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    return [
        {
            "id": i,
            "name": f"{GOODS[i % len(GOODS)]}, {KINDS[(i // len(GOODS)) % len(KINDS)]} #{i}",
            "price": rng.randint(30, 500_00),
        }
        for i in range(1, count + 1)
    ]


def sales(
    store_rows: list[dict[str, Any]],
    product_rows: list[dict[str, Any]],
    count: int,
    *,
    now: datetime,
    days: int = 365,
    seed: int = 3,
) -> Iterator[dict[str, Any]]:
    """``count`` sales spread over the ``days`` before ``now``, priced and dated.

    Popularity is skewed (a few products and stores sell far more), so the
    reports have a clear top ten.
    """
    rng = random.Random(seed)
    zones = {s["id"]: zone(s["timezone"]) for s in store_rows}
    store_weights = [1.0 / (i + 1) ** 0.5 for i in range(len(store_rows))]
    product_weights = [1.0 / (i + 1) for i in range(len(product_rows))]
    span = days * 86_400
    start = now - timedelta(seconds=span)
    chunk = 10_000
    for offset in range(0, count, chunk):
        n = min(chunk, count - offset)
        picked_stores = rng.choices(store_rows, store_weights, k=n)
        picked_products = rng.choices(product_rows, product_weights, k=n)
        for store, product in zip(picked_stores, picked_products, strict=True):
            sold_at = start + timedelta(seconds=rng.random() * span)
            quantity = 1 if rng.random() < 0.8 else rng.randint(2, 6)
            # One sale in ten is on promotion: 15% off the catalog price.
            charged = product["price"] if rng.random() < 0.9 else product["price"] * 85 // 100
            yield {
                "store_id": store["id"],
                "product_id": product["id"],
                "quantity": quantity,
                "unit_price": charged,
                "amount": quantity * charged,
                "sold_at": sold_at.astimezone(UTC),
                "received_at": sold_at.astimezone(UTC),
                "month": month_of(sold_at, zones[store["id"]]),
                "idempotency_key": None,
                "catalog_price": product["price"],
            }
