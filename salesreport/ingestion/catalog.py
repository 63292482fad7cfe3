"""This process's copy of the catalog: prices, time zones, and the encoded lists."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from zoneinfo import ZoneInfo

import structlog

from .. import db
from ..changes import Changes
from ..schemas import FieldError, Product, SaleIn, Store, encoder, format_money
from ..zones import zone

log = structlog.get_logger("salesreport.catalog")


@dataclass
class Catalog:
    """Reloaded whenever another process changed the catalog (see ``changes``),
    so a price change applies from the next batch on and the lists are served
    from memory.

    A store whose time zone this server cannot load (a zone newer than its
    ``tzdata``, or a typo written into the table by hand) stays in the catalog
    without a zone: its sales get 503 until the zone is fixed; every other
    store keeps working.
    """

    database: db.Database
    changes: Changes
    version: int = -1
    prices: dict[int, int] = field(default_factory=dict)
    zones: dict[int, ZoneInfo | None] = field(default_factory=dict)
    products_json: bytes = b"[]"
    stores_json: bytes = b"[]"
    # Stores whose zone cannot be loaded, with why.
    unusable: dict[int, str] = field(default_factory=dict)
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    @property
    def loaded(self) -> bool:
        return self.version >= 0

    async def refresh(self, *, ask: bool = False) -> None:
        """Reload if the catalog changed; raises if the database cannot be read.

        ``ask`` reads the version from the database even when no change was
        announced yet (an unknown id may be a product added a moment ago).
        """
        if not ask and not self.changes.stale("catalog", self.version):
            return
        async with self._lock:
            with self.changes.reloading("catalog"):
                async with self.database.control.connect() as conn:
                    version = await db.get_version(conn, "catalog")
                    if version == self.version:
                        return
                    products = await db.list_products(conn)
                    stores = await db.list_stores(conn)
            zones: dict[int, ZoneInfo | None] = {}
            unusable: dict[int, str] = {}
            for s in stores:
                try:
                    zones[s.id] = zone(s.timezone)
                except ValueError as exc:
                    zones[s.id] = None
                    unusable[s.id] = str(exc)
                    log.error(
                        "a store's time zone cannot be loaded; its sales are refused", store_id=s.id, error=str(exc)
                    )
            self.prices = {p.id: p.price for p in products}
            self.zones = zones
            self.unusable = unusable
            self.products_json = encoder.encode(
                [Product(id=p.id, name=p.name, price=format_money(p.price)) for p in products]
            )
            self.stores_json = encoder.encode([Store(id=s.id, address=s.address, timezone=s.timezone) for s in stores])
            self.version = version

    def unknown(self, sales: Sequence[SaleIn], is_array: bool) -> list[FieldError]:
        errors = []
        for i, sale in enumerate(sales):
            index = i if is_array else None
            if sale.product_id not in self.prices:
                errors.append(FieldError(field="product_id", index=index, message="no such product"))
            if sale.store_id not in self.zones:
                errors.append(FieldError(field="store_id", index=index, message="no such store"))
        return errors

    def undatable(self, sales: Sequence[SaleIn]) -> str | None:
        """Why these sales cannot be dated now (a store without a usable zone), or None."""
        if not self.unusable:
            return None
        for sale in sales:
            if sale.store_id in self.unusable:
                return f"store {sale.store_id} has a time zone this server cannot use: {self.unusable[sale.store_id]}"
        return None
