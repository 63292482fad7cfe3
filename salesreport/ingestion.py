"""From a POST body to a committed sale: validation, the catalog, group commit.

A request hands its validated sales to the process's ``Batcher``. The batcher's
one task takes everything pending, writes it in one transaction together with
the rollups, commits, and only then answers each request: an acknowledged sale
is durable. A request whose sales cannot be stored (a conflicting replay) fails
alone; its batch-mates are written without it.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import msgspec
import sqlalchemy as sa
import structlog
from sqlalchemy.ext.asyncio import AsyncConnection

from . import db
from .changes import Changes
from .schemas import (
    CONTROL_CHARACTERS,
    EARLIEST_SALE,
    MAX_BATCH,
    FieldError,
    Product,
    SaleIn,
    SaleOut,
    SalesIn,
    Store,
    encoder,
    format_money,
    month_of,
)

log = structlog.get_logger("salesreport.ingestion")

FUTURE_TOLERANCE = timedelta(minutes=5)
_sale_fields = msgspec.structs.fields(SaleIn)


class Malformed(Exception):
    """The body is not JSON (or not JSON this service can represent)."""


class Rejected(Exception):
    """The sales were refused; nothing of the request was stored."""

    def __init__(self, errors: list[FieldError]) -> None:
        super().__init__(errors)
        self.errors = errors


class Unavailable(Exception):
    """The sales could not be stored now; the client should retry later."""

    def __init__(self, detail: str, retry_after: int = 1) -> None:
        super().__init__(detail)
        self.detail = detail
        self.retry_after = retry_after


# --- parsing -------------------------------------------------------------------

_decoder = msgspec.json.Decoder(SalesIn)


def parse_sales(body: bytes) -> tuple[list[SaleIn], bool]:
    """Decode a POST body into sales, and whether it was an array.

    The typed decoder is the fast path. When it refuses, the body is decoded
    again untyped to tell malformed JSON (400) from a wrong shape (422) and to
    name *every* offending field, which msgspec alone stops at the first of.
    """
    try:
        decoded = _decoder.decode(body)
    except msgspec.ValidationError:
        pass
    except (msgspec.DecodeError, RecursionError, UnicodeDecodeError) as exc:
        raise Malformed(str(exc)) from None
    else:
        return (decoded, True) if isinstance(decoded, list) else ([decoded], False)
    try:
        generic = msgspec.json.decode(body)
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError, UnicodeDecodeError) as exc:
        raise Malformed(str(exc)) from None
    raise Rejected(shape_errors(generic))


def shape_errors(value: Any) -> list[FieldError]:
    if isinstance(value, dict):
        return _item_errors(value, None)
    if isinstance(value, list):
        if not 1 <= len(value) <= MAX_BATCH:
            return [FieldError(field="body", message=f"an array must hold 1 to {MAX_BATCH} sales, got {len(value)}")]
        return [error for index, item in enumerate(value) for error in _item_errors(item, index)]
    return [FieldError(field="body", message="expected a sale object or an array of sale objects")]


def _item_errors(item: Any, index: int | None) -> list[FieldError]:
    if not isinstance(item, dict):
        return [FieldError(field="body", index=index, message="expected a sale object")]
    known = {f.encode_name for f in _sale_fields}
    errors = [
        FieldError(field=str(name)[:64], index=index, message="unknown field") for name in item if name not in known
    ]
    for f in _sale_fields:
        if f.encode_name not in item:
            if f.required:
                errors.append(FieldError(field=f.encode_name, index=index, message="required"))
            continue
        try:
            msgspec.convert(item[f.encode_name], f.type, strict=True)
        except msgspec.ValidationError as exc:
            errors.append(FieldError(field=f.encode_name, index=index, message=str(exc).split(" - at ")[0]))
    return errors


def same_sale(a: SaleIn, b: SaleIn) -> bool:
    """Whether ``b`` repeats ``a`` (the rule for replays inside one array)."""
    return (
        a.product_id == b.product_id
        and a.quantity == b.quantity
        and (a.sold_at is None or b.sold_at is None or a.sold_at == b.sold_at)
    )


def check_sales(sales: Sequence[SaleIn], now: datetime, is_array: bool) -> list[FieldError]:
    """Rules beyond types: time bounds and one key, one sale within an array."""
    errors: list[FieldError] = []
    seen: dict[tuple[int, str], SaleIn] = {}
    for i, sale in enumerate(sales):
        index = i if is_array else None
        if sale.sold_at is not None:
            if sale.sold_at > now + FUTURE_TOLERANCE:
                errors.append(FieldError(field="sold_at", index=index, message="more than 5 minutes in the future"))
            elif sale.sold_at < EARLIEST_SALE:
                errors.append(FieldError(field="sold_at", index=index, message="before 2000-01-01"))
        if sale.idempotency_key is not None:
            if CONTROL_CHARACTERS.search(sale.idempotency_key):  # the pattern's $ lets a final newline through
                errors.append(FieldError(field="idempotency_key", index=index, message="control characters"))
            key = (sale.store_id, sale.idempotency_key)
            first = seen.setdefault(key, sale)
            if first is not sale and not same_sale(first, sale):
                errors.append(
                    FieldError(
                        field="idempotency_key",
                        index=index,
                        message="used by an earlier item of this array for a different sale",
                    )
                )
    return errors


# --- the catalog -----------------------------------------------------------------


@dataclass
class Catalog:
    """This process's copy of the catalog: prices, time zones, and the encoded lists.

    It is reloaded whenever another process changed it (see ``changes``), so a
    price change applies from the next batch on and the lists are served from
    memory.
    """

    database: db.Database
    changes: Changes
    version: int = -1
    prices: dict[int, int] = field(default_factory=dict)
    zones: dict[int, ZoneInfo] = field(default_factory=dict)
    products_json: bytes = b"[]"
    stores_json: bytes = b"[]"
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def refresh(self, *, ask: bool = False) -> None:
        """Reload if the catalog changed; raises if the database is down.

        ``ask`` reads the version from the database even when no change was
        announced yet (an unknown id may be a product added a moment ago).
        """
        if not ask and not self.changes.stale("catalog", self.version):
            return
        async with self._lock:
            with self.changes.reloading("catalog"):
                async with self.database.reader.connect() as conn:
                    version = await db.get_version(conn, "catalog")
                    if version == self.version:
                        return
                    products = await db.list_products(conn)
                    stores = await db.list_stores(conn)
            self.prices = {p.id: p.price for p in products}
            self.zones = {s.id: ZoneInfo(s.timezone) for s in stores}
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


# --- group commit ----------------------------------------------------------------


@dataclass(slots=True)
class _Request:
    sales: list[SaleIn]
    is_array: bool
    received_at: datetime
    future: asyncio.Future[tuple[list[SaleOut], bool]]


def _sale_out(row: dict[str, Any]) -> SaleOut:
    return SaleOut(
        id=row["id"],
        product_id=row["product_id"],
        store_id=row["store_id"],
        quantity=row["quantity"],
        unit_price=format_money(row["unit_price"]),
        amount=format_money(row["amount"]),
        sold_at=row["sold_at"],
        idempotency_key=row["idempotency_key"],
    )


class Batcher:
    def __init__(
        self,
        database: db.Database,
        catalog: Catalog,
        *,
        max_sales: int,
        flush_ms: int,
        queue_max_sales: int,
    ) -> None:
        self.db = database
        self.catalog = catalog
        self.max_sales = max_sales
        self.flush_seconds = flush_ms / 1000
        self.queue_max_sales = queue_max_sales
        self._queue: deque[_Request] = deque()
        self._queued_sales = 0
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="salesreport-batcher")
        self._task.add_done_callback(self._stopped)

    def _stopped(self, task: asyncio.Task[None]) -> None:
        """If the writer ever dies, no request may wait for it forever."""
        if not task.cancelled() and task.exception() is not None:
            log.error("the sales writer stopped", error=repr(task.exception()))
        while self._queue:
            request = self._queue.popleft()
            if not request.future.done():
                request.future.set_exception(Unavailable("the sales writer is not running", retry_after=5))
        self._queued_sales = 0

    async def close(self) -> None:
        """Refuse new sales, write everything queued, then stop."""
        self._closing = True
        self._wakeup.set()
        if self._task is not None:
            await asyncio.wait([self._task])  # however it ended

    async def submit(self, sales: list[SaleIn], is_array: bool, received_at: datetime) -> tuple[list[SaleOut], bool]:
        """Store ``sales``; return them as stored and whether any was new."""
        if self._closing:
            raise Unavailable("the service is shutting down", retry_after=1)
        if self._task is None or self._task.done():
            raise Unavailable("the sales writer is not running", retry_after=5)
        if self._queued_sales + len(sales) > self.queue_max_sales:
            raise Unavailable("too many sales waiting to be written", retry_after=1)
        future: asyncio.Future[tuple[list[SaleOut], bool]] = asyncio.get_running_loop().create_future()
        self._queue.append(_Request(sales, is_array, received_at, future))
        self._queued_sales += len(sales)
        self._wakeup.set()
        return await future

    async def _run(self) -> None:
        while True:
            if not self._queue:
                if self._closing:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            if self._queued_sales < self.max_sales and self.flush_seconds > 0 and not self._closing:
                # Let concurrent requests join this batch.
                await asyncio.sleep(self.flush_seconds)
            batch: list[_Request] = []
            size = 0
            while self._queue and (not batch or size + len(self._queue[0].sales) <= self.max_sales):
                request = self._queue.popleft()
                batch.append(request)
                size += len(request.sales)
            self._queued_sales -= size
            await self._write(batch)

    async def _write(self, batch: list[_Request]) -> None:
        outcomes: list[tuple[list[SaleOut], bool] | Exception]
        for attempt in range(1, 4):
            try:
                outcomes = await self._transaction(batch, look_up_keys=attempt > 1)
            except Exception as exc:  # every request gets an answer, whatever happened
                if (isinstance(exc, _Raced) or _sqlstate(exc) in _RETRYABLE_SQLSTATES) and attempt < 3:
                    # Another writer stored one of these idempotency keys after
                    # we looked: the next attempt sees it and judges it.
                    log.info("batch raced another writer, retrying", attempt=attempt, error=str(exc))
                    continue
                if _refused_data(exc):
                    if len(batch) > 1:
                        # Some request holds a value the database refuses: write
                        # each request alone, so that only that one fails.
                        log.warning("batch refused by the database, writing its requests one by one", error=str(exc))
                        for request in batch:
                            await self._write([request])
                        return
                    log.warning("sales refused by the database", error=str(exc))
                    reason = (str(getattr(exc, "orig", exc)).splitlines() or [type(exc).__name__])[0]
                    detail = f"the database refused a value: {reason[:200]}"
                    outcomes = [Rejected([FieldError(field="body", message=detail)])]
                    break
                if isinstance(exc, (*db.ERRORS, sqlite3.Error)) or _sqlstate(exc) is not None:
                    log.warning("batch failed", error=str(exc))
                else:
                    log.exception("batch failed")
                outcomes = [Unavailable("the sales could not be stored now", retry_after=2)] * len(batch)
            break
        for request, outcome in zip(batch, outcomes, strict=True):
            if request.future.done():
                continue
            if isinstance(outcome, Exception):
                request.future.set_exception(outcome)
            else:
                request.future.set_result(outcome)

    async def _transaction(
        self, batch: list[_Request], *, look_up_keys: bool
    ) -> list[tuple[list[SaleOut], bool] | Exception]:
        await self.catalog.refresh()
        steps = self._steps(batch, look_up_keys=look_up_keys)
        plans, results, is_new = await db.run_batch(self.db, steps, self.catalog.changes.slot)
        return self._answers(plans, results, is_new)

    def _steps(self, batch: list[_Request], *, look_up_keys: bool) -> db.Steps:
        """The batch's transaction, as steps for ``db.run_batch``.

        The first attempt inserts without looking the keys up: a key already
        stored leaves its row out, and is judged then. Only a key stored with
        other content makes the batch start again, looking first.
        """
        keys = {
            (sale.store_id, sale.idempotency_key)
            for request in batch
            for sale in request.sales
            if sale.idempotency_key is not None
        }
        stored = (yield ("find", keys)) if keys and look_up_keys else {}
        new_rows: list[dict[str, Any]] = []
        new_sales: list[SaleIn] = []
        new_by_key: dict[tuple[int, str], int] = {}
        # Per request: its answer, each sale either a stored row or the index of a new row.
        plans = [self._plan(request, stored, new_rows, new_sales, new_by_key) for request in batch]
        ids = (yield ("insert", new_rows)) if new_rows else []
        # A row left out (None) has a key stored before or by another writer
        # meanwhile: a replay if the content is the same, else start again.
        lost = {(r["store_id"], r["idempotency_key"]) for r, i in zip(new_rows, ids, strict=True) if i is None}
        winners = (yield ("find", lost)) if lost else {}
        results: list[dict[str, Any]] = []
        is_new: list[bool] = []
        for row, sale, new_id in zip(new_rows, new_sales, ids, strict=True):
            if new_id is None:
                winner = winners[(row["store_id"], row["idempotency_key"])]
                if not _matches(winner, sale):
                    raise _Raced
                results.append(winner)
                is_new.append(False)
            else:
                row["id"] = new_id
                results.append(row)
                is_new.append(True)
        return plans, results, is_new

    @staticmethod
    def _answers(
        plans: list[list[Any] | Exception], results: list[dict[str, Any]], is_new: list[bool]
    ) -> list[tuple[list[SaleOut], bool] | Exception]:
        # Committed: build the answers.
        outcomes: list[tuple[list[SaleOut], bool] | Exception] = []
        for plan in plans:
            if isinstance(plan, Exception):
                outcomes.append(plan)
                continue
            created = any(isinstance(entry, int) and is_new[entry] for entry in plan)
            rows = [
                _sale_out(results[e] if isinstance(e, int) else results[e.position] if isinstance(e, _Replay) else e)
                for e in plan
            ]
            outcomes.append((rows, created))
        return outcomes

    def _plan(
        self,
        request: _Request,
        stored: dict[tuple[int, str], Any],
        new_rows: list[dict[str, Any]],
        new_sales: list[SaleIn],
        new_by_key: dict[tuple[int, str], int],
    ) -> list[Any] | Exception:
        errors = self.catalog.unknown(request.sales, request.is_array)
        if errors:
            return Rejected(errors)
        plan: list[Any] = []
        pending: list[dict[str, Any]] = []
        pending_sales: list[SaleIn] = []
        pending_keys: dict[tuple[int, str], int] = {}
        for i, sale in enumerate(request.sales):
            key = (sale.store_id, sale.idempotency_key) if sale.idempotency_key is not None else None
            if key is not None:
                previous = stored.get(key)
                if previous is not None:
                    if not _matches(previous, sale):
                        errors.append(_conflict(i if request.is_array else None))
                    plan.append(previous)
                    continue
                if key in pending_keys:  # the same sale twice in this array
                    position = pending_keys[key]
                    if not _matches(pending[position - len(new_rows)], sale):
                        errors.append(_conflict(i if request.is_array else None))
                    plan.append(position)
                    continue
                if key in new_by_key:  # a sale another request of this batch stores: a replay
                    position = new_by_key[key]
                    if not _matches(new_rows[position], sale):
                        errors.append(_conflict(i if request.is_array else None))
                    plan.append(_Replay(position))
                    continue
            sold_at = sale.sold_at.astimezone(UTC) if sale.sold_at is not None else request.received_at
            price = self.catalog.prices[sale.product_id]
            row = {
                "store_id": sale.store_id,
                "product_id": sale.product_id,
                "quantity": sale.quantity,
                "unit_price": price,
                "amount": price * sale.quantity,
                "sold_at": sold_at,
                "received_at": request.received_at,
                "month": month_of(sold_at, self.catalog.zones[sale.store_id]),
                "idempotency_key": sale.idempotency_key,
            }
            position = len(new_rows) + len(pending)
            pending.append(row)
            pending_sales.append(sale)
            if key is not None:
                pending_keys[key] = position
            plan.append(position)
        if errors:
            return Rejected(errors)
        new_rows.extend(pending)
        new_sales.extend(pending_sales)
        new_by_key.update(pending_keys)
        return plan


async def store_history(conn: AsyncConnection, rows: Sequence[dict[str, Any]], slot: int = 0) -> None:
    """The bulk path: insert already-priced sales and their rollups, no answers."""
    await db.insert_sales_bulk(conn, rows)
    await db.add_to_rollups(conn, slot, *db.aggregate(rows))


# Unique violation, serialization failure, deadlock: another writer got there
# first. (SQLite cannot race: its writer looks keys up under BEGIN IMMEDIATE.)
_RETRYABLE_SQLSTATES = {"23505", "40001", "40P01"}


@dataclass(frozen=True, slots=True)
class _Replay:
    """In a plan: the new row that an earlier request of the same batch stores."""

    position: int


class _Raced(Exception):
    """Another writer stored one of the batch's keys with different content."""


def _refused_data(exc: BaseException) -> bool:
    """A data or integrity error: the values are at fault, and a retry would fail alike."""
    if isinstance(exc, sa.exc.DataError | sa.exc.IntegrityError | sqlite3.DataError | sqlite3.IntegrityError):
        return True
    if isinstance(exc, OverflowError):  # a driver refusing an integer
        return True
    state = _sqlstate(exc)
    return state is not None and state[:2] in ("22", "23")


def _sqlstate(exc: BaseException) -> str | None:
    """The SQLSTATE of a driver error, raw or wrapped by SQLAlchemy."""
    state = getattr(exc, "sqlstate", None) or getattr(getattr(exc, "orig", None), "sqlstate", None)
    return state if isinstance(state, str) else None


def _matches(stored: dict[str, Any], sale: SaleIn) -> bool:
    """Whether ``sale`` repeats the stored sale with its key (the replay rule)."""
    return (
        stored["product_id"] == sale.product_id
        and stored["quantity"] == sale.quantity
        and (sale.sold_at is None or stored["sold_at"] == sale.sold_at)
    )


def _conflict(index: int | None) -> FieldError:
    return FieldError(
        field="idempotency_key",
        index=index,
        message="already used for a different sale of this store",
    )
