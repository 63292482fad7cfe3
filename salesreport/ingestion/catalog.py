"""This process's copy of the catalog: price histories, time zones, what is retired, and the encoded lists."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import structlog

from .. import db
from ..changes import Changes
from ..compression import Encoded
from ..db.replica import Reads
from ..prices import History, next_change, price_at
from ..schemas import FieldError, PriceOut, Product, ProductDetail, Store, encoder, format_money
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
    histories: dict[int, History] = field(default_factory=dict)
    names: dict[int, str] = field(default_factory=dict)
    zones: dict[int, ZoneInfo | None] = field(default_factory=dict)
    retired_products: frozenset[int] = frozenset()
    retired_stores: frozenset[int] = frozenset()
    stores_json: Encoded = field(default_factory=lambda: Encoded(b"[]"))
    store_rows: dict[int, Store] = field(default_factory=dict)
    all_stores_json: Encoded = field(default_factory=lambda: Encoded(b"[]"))
    # Stores whose zone cannot be loaded, with why.
    unusable: dict[int, str] = field(default_factory=dict)
    # The product lists show prices in force now: rendered again when a scheduled price takes effect.
    _products_json: dict[bool, tuple[Encoded, datetime | None, datetime | None]] = field(default_factory=dict)
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    # Which database answers; None: the primary, always.
    reads: Reads | None = None

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
        if self.reads is not None and self.reads.keeps(self.loaded):
            return
        async with self._lock:
            if not ask and not self.changes.stale("catalog", self.version):
                return  # another request reloaded meanwhile
            started = self.changes.clock()
            try:
                async with self.database.control.connect() as conn:
                    version = await db.get_version(conn, "catalog")
                    if version == self.version:
                        self.changes.seen("catalog", version, started)
                        return
                    products = await db.list_products(conn)
                    histories = await db.list_prices(conn)
                    stores = await db.list_stores(conn)
            except Exception as exc:
                if self.reads is not None and self.reads.keeps(self.loaded, exc):
                    return
                raise
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
            # A product without a price (written by hand) cannot be sold: it is left out.
            self.histories = {p.id: histories[p.id] for p in products if p.id in histories}
            self.names = {p.id: p.name for p in products if p.id in histories}
            self.retired_products = frozenset(p.id for p in products if p.retired)
            self.retired_stores = frozenset(s.id for s in stores if s.retired)
            self.zones = zones
            self.unusable = unusable
            self._products_json = {}
            store_list = [Store(id=s.id, address=s.address, timezone=s.timezone, retired=s.retired) for s in stores]
            self.store_rows = {s.id: s for s in store_list}
            self.stores_json = Encoded(encoder.encode([s for s in store_list if not s.retired]))
            self.all_stores_json = Encoded(encoder.encode(store_list))
            self.version = version
            self.changes.seen("catalog", version, started)

    def store(self, store_id: int) -> Store | None:
        return self.store_rows.get(store_id)

    def price_at(self, product_id: int, instant: datetime) -> int:
        return price_at(self.histories[product_id], instant)

    def products_json(self, now: datetime, *, include_retired: bool = False) -> Encoded:
        """Every product with the price in force at ``now``, encoded (and compressed once asked for,
        see ``compression``); cached until a price changes."""
        cached = self._products_json.get(include_retired)
        if cached is not None:
            body, since, until = cached
            if since is not None and since <= now and (until is None or now < until):
                return body
        products = [
            Product(id=p, name=self.names[p], price=format_money(price_at(h, now)), retired=p in self.retired_products)
            for p, h in sorted(self.histories.items())
            if include_retired or p not in self.retired_products
        ]
        changes = [c for h in self.histories.values() if (c := next_change(h, now)) is not None]
        body = Encoded(encoder.encode(products))
        self._products_json[include_retired] = (body, now, min(changes, default=None))
        return body

    def product(self, product_id: int, now: datetime) -> ProductDetail | None:
        history = self.histories.get(product_id)
        if history is None:
            return None
        return ProductDetail(
            id=product_id,
            name=self.names[product_id],
            price=format_money(price_at(history, now)),
            retired=product_id in self.retired_products,
            prices=[
                PriceOut(effective_from=None if start == db.BEGINNING else start, price=format_money(price))
                for start, price in history
            ],
        )

    def unknown(self, sales: Sequence[Any], is_array: bool) -> list[FieldError]:
        """Ids of products and stores that do not exist (a sale's or a return's; a return has no product)."""
        errors = []
        for i, sale in enumerate(sales):
            index = i if is_array else None
            product_id = getattr(sale, "product_id", None)
            if product_id is not None and product_id not in self.histories:
                errors.append(FieldError(field="product_id", index=index, message="no such product"))
            if sale.store_id is not None and sale.store_id not in self.zones:
                errors.append(FieldError(field="store_id", index=index, message="no such store"))
        return errors

    def retired(
        self, index: int | None, *, product_id: int | None = None, store_id: int | None = None
    ) -> list[FieldError]:
        """Why a new sale (or return) cannot be taken: its product or store is retired. A replay of
        one stored before is answered all the same, so this is asked of new ones only."""
        errors = []
        if product_id in self.retired_products:
            errors.append(FieldError(field="product_id", index=index, message="the product is retired"))
        if store_id in self.retired_stores:
            errors.append(FieldError(field="store_id", index=index, message="the store is retired"))
        return errors

    def undatable(self, sales: Sequence[Any]) -> str | None:
        """Why these sales cannot be dated now (a store without a usable zone), or None."""
        if not self.unusable:
            return None
        for sale in sales:
            if sale.store_id in self.unusable:
                return f"store {sale.store_id} has a time zone this server cannot use: {self.unusable[sale.store_id]}"
        return None
