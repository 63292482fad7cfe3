"""One batch's transaction, decided: which keys to look up, which rows to insert, what each request is told.

``BatchPlan`` is a ``db.BatchJob``: a writer calls its steps in one transaction
(see ``db.batch``). It does no I/O, so the same decisions hold on both databases.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from ..db import Key, Row
from ..schemas import SaleIn, SaleOut, format_money, month_of, parse_money
from .catalog import Catalog
from .errors import Rejected, Unavailable
from .replay import conflict, is_replay, live_after


@dataclass(slots=True)
class Request:
    """The sales (or returns) of one POST, waiting for the writer."""

    items: list[Any]
    is_array: bool
    received_at: datetime
    request_id: str | None = None
    # When its client is answered 503 if no batch has written it (the event loop's clock).
    deadline: float = 0.0
    # Given up by its client (deadline passed) before a batch took it.
    abandoned: bool = False
    future: Any = None  # asyncio.Future[Stored], set by the batcher


@dataclass(frozen=True, slots=True)
class Stored:
    """A request's sales (or returns) as stored, in order, and which of them are new (the rest are replays)."""

    items: list[Any]
    new: list[bool]

    @property
    def created(self) -> bool:
        return any(self.new)

    @property
    def replayed_ids(self) -> list[int]:
        return [item.id for item, new in zip(self.items, self.new, strict=True) if not new]


class Raced(Exception):
    """Another writer stored one of the batch's keys meanwhile: start again, looking keys up first."""


# How a sale of a request is answered: a stored sale (a replay), or a row this
# batch inserts, which the request either creates or repeats.
@dataclass(frozen=True, slots=True)
class _StoredSale:
    row: Row


@dataclass(frozen=True, slots=True)
class _NewRow:
    position: int
    creates: bool


Outcome = Stored | Exception


@dataclass
class BatchPlan:
    batch: list[Request]
    catalog: Catalog
    look_up: bool
    key_lifetime: timedelta
    _rows: list[Row] = field(default_factory=list)
    _sales: list[SaleIn] = field(default_factory=list)
    _plans: list[list[_StoredSale | _NewRow] | Exception] = field(default_factory=list)

    @property
    def live_after(self) -> datetime:
        return live_after(max(r.received_at for r in self.batch), self.key_lifetime)

    def keys_to_find(self) -> Collection[Key]:
        """The first attempt inserts without looking: a key stored before is
        left out by the insert and judged then. Only a key stored with other
        content makes the batch start again, looking first."""
        if not self.look_up:
            return ()
        return {
            (sale.store_id, sale.idempotency_key)
            for request in self.batch
            for sale in request.items
            if sale.idempotency_key is not None
        }

    def plan(self, stored: Mapping[Key, Row]) -> list[Row]:
        self._rows, self._sales = [], []
        by_key: dict[Key, int] = {}
        self._plans = [self._plan(request, stored, by_key) for request in self.batch]
        return self._rows

    def lost(self, ids: Sequence[int | None]) -> Collection[Key]:
        return {(r["store_id"], r["idempotency_key"]) for r, i in zip(self._rows, ids, strict=True) if i is None}

    def resolve(self, ids: Sequence[int | None], winners: Mapping[Key, Row]) -> list[Outcome]:
        """Each request's answer; raises ``Raced`` if a key went to another sale meanwhile."""
        inserted: list[bool] = []
        for position, (row, sale, new_id) in enumerate(zip(self._rows, self._sales, ids, strict=True)):
            if new_id is None:
                # Stored before (or by another writer meanwhile): a replay if the same sale.
                winner = winners.get((row["store_id"], row["idempotency_key"]))
                if winner is None or not is_replay(winner, sale):
                    raise Raced
                self._rows[position] = winner
                inserted.append(False)
            else:
                row["id"] = new_id
                inserted.append(True)
        outcomes: list[Outcome] = []
        for plan in self._plans:
            if isinstance(plan, Exception):
                outcomes.append(plan)
                continue
            rows = [entry.row if isinstance(entry, _StoredSale) else self._rows[entry.position] for entry in plan]
            new = [isinstance(entry, _NewRow) and entry.creates and inserted[entry.position] for entry in plan]
            outcomes.append(Stored([sale_out(row) for row in rows], new))
        return outcomes

    def _plan(self, request: Request, stored: Mapping[Key, Row], by_key: dict[Key, int]) -> list[Any] | Exception:
        errors = self.catalog.unknown(request.items, request.is_array)
        if errors:
            return Rejected(errors)
        undatable = self.catalog.undatable(request.items)
        if undatable:
            return Unavailable(undatable, retry_after=60)
        plan: list[_StoredSale | _NewRow] = []
        rows: list[Row] = []
        sales: list[SaleIn] = []
        keys: dict[Key, int] = {}  # this request's new keys, by position
        for i, sale in enumerate(request.items):
            index = i if request.is_array else None
            key = (sale.store_id, sale.idempotency_key) if sale.idempotency_key is not None else None
            if key is not None:
                first: Row | None = None
                entry: _StoredSale | _NewRow | None = None
                if key in stored:
                    first, entry = stored[key], _StoredSale(stored[key])
                elif key in keys:  # twice in this request
                    position = keys[key]
                    first, entry = rows[position - len(self._rows)], _NewRow(position, creates=False)
                elif key in by_key:  # in an earlier request of this batch
                    position = by_key[key]
                    first, entry = self._rows[position], _NewRow(position, creates=False)
                if first is not None and entry is not None:
                    if not is_replay(first, sale):
                        if not isinstance(entry, _StoredSale) and not self.look_up:
                            # Judged against a row of this batch, which may itself repeat a sale
                            # stored before (then both are replays of it): look the keys up first.
                            raise Raced
                        errors.append(conflict(index))
                    plan.append(entry)
                    continue
            retired = self.catalog.retired(index, product_id=sale.product_id, store_id=sale.store_id)
            if retired:
                if key is not None and not self.look_up:
                    raise Raced  # it may be a retry of a sale stored before its retirement: look the keys up
                errors += retired
                continue
            position = len(self._rows) + len(rows)
            rows.append(self._row(sale, request.received_at))
            sales.append(sale)
            if key is not None:
                keys[key] = position
            plan.append(_NewRow(position, creates=True))
        if errors:
            return Rejected(errors)
        self._rows.extend(rows)
        self._sales.extend(sales)
        by_key.update(keys)
        return plan

    def _row(self, sale: SaleIn, received_at: datetime) -> Row:
        sold_at = sale.sold_at.astimezone(UTC) if sale.sold_at is not None else received_at
        catalog_price = self.catalog.price_at(sale.product_id, sold_at)
        price = parse_money(sale.unit_price) if sale.unit_price is not None else catalog_price
        zone = self.catalog.zones[sale.store_id]
        assert zone is not None  # undatable() refused the request otherwise
        return {
            "store_id": sale.store_id,
            "product_id": sale.product_id,
            "quantity": sale.quantity,
            "unit_price": price,
            "amount": price * sale.quantity,
            "sold_at": sold_at,
            "received_at": received_at,
            "month": month_of(sold_at, zone),
            "idempotency_key": sale.idempotency_key,
            "catalog_price": catalog_price,
        }


def sale_out(row: Row) -> SaleOut:
    return SaleOut(
        id=row["id"],
        product_id=row["product_id"],
        store_id=row["store_id"],
        quantity=row["quantity"],
        unit_price=format_money(row["unit_price"]),
        amount=format_money(row["amount"]),
        sold_at=row["sold_at"],
        idempotency_key=row["idempotency_key"],
        catalog_price=format_money(row["catalog_price"]),
    )
