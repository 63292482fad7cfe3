"""One batch of returns, decided: which sales to lock, which returns to insert, what each request is told.

``ReturnPlan`` is a ``db.ReturnJob`` (see ``db.batch``). It does no I/O. The
sales being returned are read under a row lock before anything is decided,
so the bound (never more units back than were sold, less those already
returned) holds under concurrent returns from any number of writers.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from ..db import Key, Row
from ..schemas import FieldError, ReturnIn, ReturnOut, format_money, month_of
from .catalog import Catalog
from .errors import Rejected, Unavailable
from .plan import Outcome, Raced, Request, Stored
from .replay import conflict, is_return_replay, live_after


@dataclass
class ReturnPlan:
    batch: list[Request]
    catalog: Catalog
    key_lifetime: timedelta
    look_up: bool = True  # returns always look their keys up first: they are few, and a lookup is one query
    _rows: list[Row] = field(default_factory=list)
    # Per request: a stored return (a replay), or (position in _rows, whether this request creates it).
    _plans: list[list[Row | tuple[int, bool]] | Exception] = field(default_factory=list)
    _sales: Mapping[int, Row] = field(default_factory=dict)

    @property
    def live_after(self) -> datetime:
        return live_after(max(r.received_at for r in self.batch), self.key_lifetime)

    def sales_to_lock(self) -> Collection[int]:
        return {item.sale_id for request in self.batch for item in request.items}

    def keys_to_find(self, sales: Mapping[int, Row]) -> Collection[Key]:
        keys = set()
        for request in self.batch:
            for item in request.items:
                store_id = self._store_of(item, sales)
                if item.idempotency_key is not None and store_id is not None:
                    keys.add((store_id, item.idempotency_key))
        return keys

    def plan(self, stored: Mapping[Key, Row], sales: Mapping[int, Row]) -> list[Row]:
        self._rows, self._sales = [], sales
        taken: dict[int, int] = {}  # units this batch returns, by sale
        by_key: dict[Key, int] = {}
        self._plans = [self._plan(request, stored, sales, taken, by_key) for request in self.batch]
        return self._rows

    def resolve(self, ids: Sequence[int | None]) -> list[Outcome]:
        if any(i is None for i in ids):
            raise Raced  # another writer took a key after we looked: look again
        for row, new_id in zip(self._rows, ids, strict=True):
            row["id"] = new_id
        outcomes: list[Outcome] = []
        for plan in self._plans:
            if isinstance(plan, Exception):
                outcomes.append(plan)
                continue
            items = [self._rows[entry[0]] if isinstance(entry, tuple) else entry for entry in plan]
            new = [isinstance(entry, tuple) and entry[1] for entry in plan]
            outcomes.append(Stored([return_out(row) for row in items], new))
        return outcomes

    @staticmethod
    def _store_of(item: ReturnIn, sales: Mapping[int, Row]) -> int | None:
        if item.store_id is not None:
            return item.store_id
        sale = sales.get(item.sale_id)
        return None if sale is None else int(sale["store_id"])

    def _plan(
        self,
        request: Request,
        stored: Mapping[Key, Row],
        sales: Mapping[int, Row],
        taken: dict[int, int],
        by_key: dict[Key, int],
    ) -> list[Row | tuple[int, bool]] | Exception:
        errors: list[FieldError] = []
        plan: list[Row | tuple[int, bool]] = []
        rows: list[Row] = []
        mine: dict[int, int] = {}  # units this request returns, by sale
        keys: dict[Key, int] = {}
        for i, item in enumerate(request.items):
            index = i if request.is_array else None
            sale = sales.get(item.sale_id)
            if sale is None:
                errors.append(FieldError(field="sale_id", index=index, message="no such sale"))
                continue
            store_id = self._store_of(item, sales)
            assert store_id is not None
            key = (store_id, item.idempotency_key) if item.idempotency_key is not None else None
            if key is not None:
                first: Row | None = None
                entry: Row | tuple[int, bool] | None = None
                if key in stored:
                    first = entry = stored[key]
                elif key in keys:  # twice in this request
                    entry = (keys[key], False)
                    first = rows[keys[key] - len(self._rows)]
                elif key in by_key:  # in an earlier request of this batch
                    entry = (by_key[key], False)
                    first = self._rows[by_key[key]]
                if first is not None and entry is not None:
                    if not is_return_replay(first, item):
                        errors.append(conflict(index, "return"))
                    plan.append(entry)
                    continue
            item_errors = self.catalog.unknown([_AtStore(store_id)], False)
            if store_id in self.catalog.retired_stores:
                message = "the store is retired" if item.store_id is not None else "the sale's store is retired"
                item_errors.append(FieldError(field="store_id", message=message))
            returned_at = item.returned_at.astimezone(UTC) if item.returned_at is not None else request.received_at
            if returned_at < sale["sold_at"]:
                if item.returned_at is not None:
                    item_errors.append(FieldError(field="returned_at", message="before the sale was made"))
                else:
                    # The sale is dated a few minutes ahead (allowed): this return arrived before that.
                    message = f"the sale is dated {sale['sold_at'].isoformat()}, after now: give returned_at"
                    item_errors.append(FieldError(field="sale_id", message=message))
            left = sale["quantity"] - sale["returned"] - taken.get(sale["id"], 0) - mine.get(sale["id"], 0)
            if item.quantity > left:
                item_errors.append(
                    FieldError(
                        field="quantity",
                        message=f"sale {sale['id']} has {left} of {sale['quantity']} units left to return",
                    )
                )
            if item_errors:
                errors += [FieldError(field=e.field, index=index, message=e.message) for e in item_errors]
                continue
            undatable = self.catalog.undatable([_AtStore(store_id)])
            if undatable:
                return Unavailable(undatable, retry_after=60)
            zone = self.catalog.zones[store_id]
            assert zone is not None
            mine[sale["id"]] = mine.get(sale["id"], 0) + item.quantity
            position = len(self._rows) + len(rows)
            rows.append(
                {
                    "sale_id": sale["id"],
                    "store_id": store_id,
                    "product_id": sale["product_id"],
                    "quantity": item.quantity,
                    "unit_price": sale["unit_price"],
                    "amount": sale["unit_price"] * item.quantity,
                    "returned_at": returned_at,
                    "received_at": request.received_at,
                    "month": month_of(returned_at, zone),
                    "idempotency_key": item.idempotency_key,
                }
            )
            if key is not None:
                keys[key] = position
            plan.append((position, True))
        if errors:
            return Rejected(errors)
        for sale_id, units in mine.items():
            taken[sale_id] = taken.get(sale_id, 0) + units
        self._rows.extend(rows)
        by_key.update(keys)
        return plan


@dataclass(frozen=True, slots=True)
class _AtStore:
    """A store id as the catalog's checks take it (they read ``store_id``)."""

    store_id: int


def return_out(row: Row) -> ReturnOut:
    return ReturnOut(
        id=row["id"],
        sale_id=row["sale_id"],
        store_id=row["store_id"],
        product_id=row["product_id"],
        quantity=row["quantity"],
        unit_price=format_money(row["unit_price"]),
        amount=format_money(row["amount"]),
        returned_at=row["returned_at"],
        idempotency_key=row["idempotency_key"],
    )
