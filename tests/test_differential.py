"""Differential: the same random traffic must get the same answers on SQLite and on PostgreSQL.

A Hypothesis state machine drives two copies of the real ASGI app (lifespan run, reached over
httpx.ASGITransport), one on a fresh SQLite file and one on the throwaway PostgreSQL (truncated),
both seeded with the same catalog and with the clock pinned to ``FIXED_NOW``. Each step sends the
same request, or the same group of 2-4 concurrent ones, to both, and the outcomes must agree:

- the same status and the same JSON body, where a sale's ``id`` is replaced by the order in which
  that id first appeared on its side, ``received_at`` is dropped, and so is ``sold_at`` where the
  request left it out (it is the arrival time);
- at the end, the same reports (top stores of each month used and of the current one, top products
  of each month and of all time), the same stored sales and returns (ids aside), the same
  ``GET /sales/{id}`` of every sale, and rollups that ``check`` (``reports.differences``) finds clean
  on both; and on each side, every store's net revenue of every month in top-stores is exactly its
  raw sales' amounts less its raw returns' refunds, summed in SQL by the test.

Returns refer to a sale by the order in which its id first appeared (each side sends its own id for
it), or to a sale that does not exist. They are sent one at a time: which of two concurrent returns
of a sale's last unit is refused depends on which is written first.

Sales come from a small world so that idempotency matters often: three keys, two busy stores,
instants around month ends in the stores' time zones, items that repeat an earlier item of their
array (as it was or with one field changed), and requests sent again later (a retry), as they were
or with one item changed. Within a concurrent group no two requests use the same key of a store, so
that each request's outcome is the same in whatever order the group is written.

Every request is bounded by a timeout: a request that gets no answer, or a 500, fails the test even
when both sides agree. So does an app that does not shut down.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import io
import itertools
import json
import logging
import math
import random
import re
import shutil
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol, TypeVar

import httpx
import sqlalchemy as sa
from hypothesis import HealthCheck, Phase, note, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, rule, run_state_machine_as_test
from starlette.applications import Starlette

from salesreport import config, db, reports
from salesreport.api import create_app
from salesreport.schemas import format_money
from tests import pg
from tests.conftest import PRODUCTS, STORES, TABLES

T = TypeVar("T")
Item = dict[str, Any]
Body = Item | list[Item]

FIXED_NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
TIMEOUT = 5.0  # seconds: a request, an app's start-up or shut-down
# Once a request went unanswered, the shrinker replays variants of that run: each may wait less,
# or shrinking would take many minutes (a request takes milliseconds).
SHRINK_TIMEOUT = 0.5
CLEANUP_TIMEOUT = 0.2  # seconds for an app's shut-down after a failure: only cleaning up then
JSON = {"content-type": "application/json"}

UNKNOWN = 404
# Repeated entries weigh the draw; shrinking tends to the first one.
PRODUCT_CHOICES = [1, 2, 3, 1, 2, 3, 1, 2, PRODUCTS[3]["id"], UNKNOWN]
STORE_CHOICES = [1, 2, 1, 2, 1, 2, 3, 4, UNKNOWN]
QUANTITY_CHOICES = [None, 1, 2, 7]  # None: left out (1)
PRICE_CHOICES = [None, None, None, "0.00", "2.50", "12.34"]  # None: the catalog's
KEY_CHOICES = ["a", "b", "c", None]  # None: no key
INSTANTS = [
    "2026-10-01T03:30:00Z",  # New York: still September
    "2026-10-31T20:30:00Z",  # Vladivostok: November; the others: October
    "2026-10-31T22:30:00Z",  # Moscow too: November
    "2026-11-01T00:30:00+01:00",  # Berlin too: November; New York: October
    "2026-11-01T02:00:00Z",  # New York: October, the night its clocks go back
    "2026-11-01T10:00:00Z",
    "2026-11-01T13:00:00+03:00",  # the same instant, another offset
    "2026-11-30T23:30:00Z",  # New York: November; the others: December
    "2026-11-20T12:04:00Z",  # 4 minutes ahead of FIXED_NOW: accepted
]
TOO_LATE = "2026-11-20T12:06:00Z"  # 6 minutes ahead: refused
SOLD_AT_CHOICES = [*INSTANTS, *INSTANTS, TOO_LATE]  # the refused one less often: it fails a whole array
MONTHS = ["2026-09", "2026-10", "2026-11", "2026-12"]


# --- what is sent --------------------------------------------------------------------------------
#
# A new item, or a change, is one choice (an index into all of them), and no strategy depends on the
# machine's state: Hypothesis's shrinker deletes a few choices at a time, so it can remove a whole
# step only when a step is that small, and only if the steps after it still mean the same.


def _sale(**fields: Any) -> Item:
    return {name: value for name, value in fields.items() if value is not None}


_FIELD_CHOICES: list[tuple[str, list[Any]]] = [
    ("product_id", PRODUCT_CHOICES),
    ("store_id", STORE_CHOICES),
    ("quantity", QUANTITY_CHOICES),
    ("sold_at", [None] * len(SOLD_AT_CHOICES) + SOLD_AT_CHOICES),  # left out half of the time
    ("idempotency_key", KEY_CHOICES),
    ("unit_price", PRICE_CHOICES),
]
_ITEMS = math.prod(len(choices) for _, choices in _FIELD_CHOICES)
# Hypothesis draws small integers far more often than large ones: the items are numbered in a
# scrambled order (index 0 is still the first choice of every field) so that each field follows
# its weights.
_STRIDE = 7919  # a prime that does not divide _ITEMS
assert math.gcd(_STRIDE, _ITEMS) == 1


def _new_item(index: int) -> Item:
    index = index * _STRIDE % _ITEMS
    values: dict[str, Any] = {}
    for name, choices in reversed(_FIELD_CHOICES):
        index, digit = divmod(index, len(choices))
        values[name] = choices[digit]
    return _sale(**{name: values[name] for name, _ in _FIELD_CHOICES})


def _spread(choices: list[T]) -> list[T]:
    """The choices in a fixed random order but for the first (see _STRIDE)."""
    rest = choices[1:]
    random.Random(0).shuffle(rest)
    return [choices[0], *rest]


# Drawn, then made into an item by the caller (a mapped strategy would print as ``_new_item(17)``).
item_indexes = st.integers(0, _ITEMS - 1)


@dataclass(frozen=True)
class Change:
    """One field of one item (counted modulo the items) set to ``value`` (None: left out), or nothing."""

    item: int = 0
    field: str | None = None
    value: Any = None

    def __call__(self, body: Body) -> Body:
        items = _items(body)
        index = self.item % len(items)
        items = [self.of(item) if i == index else item for i, item in enumerate(items)]
        return items if isinstance(body, list) else items[0]

    def of(self, item: Item) -> Item:
        if self.field is None:
            return item
        changed = {k: v for k, v in item.items() if k != self.field}
        changed.update(_sale(**{self.field: self.value}))
        return changed

    def __repr__(self) -> str:
        return "Change()" if self.field is None else f"Change(item={self.item}, {self.field}={self.value!r})"

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:  # how Hypothesis prints a step's arguments
        printer.text(repr(self))


_FIELD_CHANGES = [
    *[("sold_at", value) for value in [None, *SOLD_AT_CHOICES]],
    *[("quantity", value) for value in QUANTITY_CHOICES],
    *[("product_id", value) for value in PRODUCT_CHOICES],
    *[("unit_price", value) for value in PRICE_CHOICES],
]
# An item of a body changed, or not (a quarter of the time); an array's item repeating an earlier one.
changes = st.sampled_from(
    _spread([Change()] * 12 + [Change(item, name, value) for item in range(5) for name, value in _FIELD_CHANGES])
)
repeats = st.sampled_from(
    _spread(
        [(back, Change()) for back in range(4)] * 12
        + [(back, Change(0, name, value)) for back in range(4) for name, value in _FIELD_CHANGES]
    )
)


@st.composite
def bodies(draw: st.DrawFn) -> Body:
    """One sale, or an array of 1-5 in which an item may repeat an earlier one, changed or not."""
    as_array = draw(st.booleans())
    items: list[Item] = []
    for _ in range(draw(st.integers(1, 5)) if as_array else 1):
        again = draw(st.booleans()) if items else False
        if again:
            back, change = draw(repeats)  # ``back``: which earlier item, counted back from the latest
            items.append(change.of(items[-1 - back % len(items)]))
        else:
            items.append(_new_item(draw(item_indexes)))
    return items if as_array else items[0]


def _items(body: Body) -> list[Item]:
    return body if isinstance(body, list) else [body]


@st.composite
def concurrent_groups(draw: st.DrawFn) -> list[Body]:
    """2-4 bodies, no two of which use the same key of a store (so that the outcome of each is the
    same in whatever order they are written): a key used by an earlier body of the group is dropped."""
    group: list[Body] = []
    taken: set[tuple[Any, str]] = set()
    for _ in range(draw(st.integers(2, 4))):
        body = draw(bodies())
        items = [
            {k: v for k, v in item.items() if k != "idempotency_key"}
            if (item["store_id"], item.get("idempotency_key")) in taken
            else item
            for item in _items(body)
        ]
        taken |= {(i["store_id"], i["idempotency_key"]) for i in items if "idempotency_key" in i}
        group.append(items if isinstance(body, list) else items[0])
    return group


# A return: which sale (by order of first appearance; past the sales seen: one that does not
# exist), how many units, at which store, when, under which key.
RETURN_STORES = [None, None, 1, 2, 4, UNKNOWN]  # None: the sale's store
RETURNED_AT = [None] * 8 + [
    *INSTANTS,
    TOO_LATE,
]  # mostly now: most sales are dated now, and none can be returned before
RETURN_QUANTITIES = [None, None, 1, 2, 7]
RETURN_KEYS = ["r", "s", None]


@st.composite
def return_bodies(draw: st.DrawFn) -> Body:
    def one() -> Item:
        return _sale(
            sale_id=draw(st.integers(0, 6)),
            quantity=draw(st.sampled_from(RETURN_QUANTITIES)),
            store_id=draw(st.sampled_from(RETURN_STORES)),
            returned_at=draw(st.sampled_from(RETURNED_AT)),
            idempotency_key=draw(st.sampled_from(RETURN_KEYS)),
        )

    if draw(st.booleans()):
        return [one() for _ in range(draw(st.integers(1, 3)))]
    return one()


# --- the two sides -------------------------------------------------------------------------------


@dataclass
class Env:
    """What the examples of one test share."""

    postgresql_url: str
    sqlite_template: Path
    workdir: Path
    counter: Iterator[int] = field(default_factory=itertools.count)
    request_timeout: float = TIMEOUT  # SHRINK_TIMEOUT once a request went unanswered


@dataclass
class Side:
    name: str
    settings: config.Settings
    app: Starlette
    stack: contextlib.AsyncExitStack
    http: httpx.AsyncClient
    ids: dict[Any, int] = field(default_factory=dict)  # sale id -> order of first appearance
    return_ids: dict[Any, int] = field(default_factory=dict)

    def ordinal(self, sale_id: Any) -> str:
        return f"sale #{self.ids.setdefault(sale_id, len(self.ids))}"

    def return_ordinal(self, return_id: Any) -> str:
        return f"return #{self.return_ids.setdefault(return_id, len(self.return_ids))}"

    def sale_id(self, ordinal: int) -> int:
        """This side's id of the ``ordinal``-th sale seen; past those, one that does not exist."""
        for sale_id, seen in self.ids.items():
            if seen == ordinal:
                return int(sale_id)
        return 10**12 + ordinal


async def _open(name: str, url: str) -> Side:
    """The app on a migrated database holding only the catalog, its lifespan entered."""
    base = config.load()
    settings = replace(base, database_url=config.async_url(url), default_timezone="UTC", log_format="console")
    database = db.connect(settings)
    try:
        async with database.writer.begin() as conn:
            if not settings.is_sqlite:
                await conn.execute(sa.text(f"TRUNCATE {TABLES} RESTART IDENTITY"))
            await db.save_catalog(conn, PRODUCTS, STORES, effective=FIXED_NOW)
    finally:
        await database.dispose()
    app = create_app(settings, clock=lambda: FIXED_NOW)
    stack = contextlib.AsyncExitStack()
    try:
        await stack.enter_async_context(app.router.lifespan_context(app))
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        http = await stack.enter_async_context(httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1"))
    except BaseException:
        await stack.aclose()
        raise
    return Side(name, settings, app, stack, http)


async def _close(side: Side, seconds: float = TIMEOUT) -> str | None:
    """Run the app's shut-down; what went wrong, if anything."""
    try:
        await asyncio.wait_for(side.stack.aclose(), seconds)
        return None
    except TimeoutError:
        problem = f"{side.name}: the app did not shut down within {seconds:g} s"
    except Exception as exc:
        problem = f"{side.name}: the app's shut-down failed: {exc!r}"
    # Release the database at least; the end of the event loop cancels whatever still waits.
    with contextlib.suppress(Exception):
        await asyncio.wait_for(side.app.state.service.db.dispose(), seconds)
    return problem


async def _stored(side: Side) -> tuple[collections.Counter[tuple[Any, ...]], list[str]]:
    """The stored sales and returns, ids and arrival times aside, and what is wrong: what ``check``
    finds, and any store-month whose net revenue in top-stores is not its raw sales' amounts less
    its raw returns' refunds."""
    sale_columns = [c for c in db.sales.c if c.name not in ("id", "received_at")]
    return_columns = [c for c in db.returns.c if c.name not in ("id", "sale_id", "received_at")]
    s, r = db.sales, db.returns
    database = db.connect(side.settings)
    try:
        async with database.reader.connect() as conn:
            rows = [("sale", *row) for row in (await conn.execute(sa.select(*sale_columns))).all()]
            rows += [("return", *row) for row in (await conn.execute(sa.select(*return_columns))).all()]
            found = [str(d) for d in await reports.differences(conn)]
            net: collections.Counter[tuple[int, int]] = collections.Counter()
            for store_id, month, amount in await conn.execute(
                sa.select(s.c.store_id, s.c.month, sa.func.sum(s.c.amount)).group_by(s.c.store_id, s.c.month)
            ):
                net[(store_id, month)] += int(amount)
            for store_id, month, refund in await conn.execute(
                sa.select(r.c.store_id, r.c.month, sa.func.sum(r.c.amount)).group_by(r.c.store_id, r.c.month)
            ):
                net[(store_id, month)] -= int(refund)
            for store_id, month in sorted(net):
                top = await reports.top_stores(conn, month, reports.MAX_LIMIT)
                reported = {row.id: row.revenue for row in top}.get(store_id)
                raw = format_money(net[(store_id, month)])
                if reported != raw:
                    found.append(f"store {store_id} in {month}: top-stores says {reported}, raw rows say {raw}")
    finally:
        await database.dispose()
    return collections.Counter(rows), found


async def _gather(*awaitables: Awaitable[T]) -> list[T]:
    """``asyncio.gather`` as a coroutine, made in the running loop (``Runner.run`` takes coroutines)."""
    return list(await asyncio.gather(*awaitables))


_FRAMES = ("│", "╭", "╰")  # the boxes in which the console renderer draws a traceback's frames


class _Tail(io.TextIOBase):
    """The last few lines the apps logged, to show with a failure (frames of tracebacks left out)."""

    def __init__(self, size: int) -> None:
        self.lines: collections.deque[str] = collections.deque(maxlen=size)

    def write(self, text: str) -> int:
        self.lines.extend(line for line in text.splitlines() if not line.startswith(_FRAMES))
        return len(text)


Request = tuple[str, str, Body | None]  # method, path, JSON body
Answer = httpx.Response | str  # str: no response, and why
Outcome = tuple[Any, Any]  # (status or "no answer", the body as compared)


def _broken(outcome: Outcome) -> bool:
    return outcome[0] in ("no answer", 500)


# --- the state machine ---------------------------------------------------------------------------


class Differential(RuleBasedStateMachine):
    def __init__(self, env: Env) -> None:
        super().__init__()
        self.env = env
        self.runner = asyncio.Runner()
        self.log = _Tail(40)
        self.posted: list[Body] = []
        self.returned: list[Body] = []
        self.failed = False
        self.sqlite_path = env.workdir / f"differential-{next(env.counter)}.db"
        self.sides: list[Side] = []
        try:
            shutil.copy(env.sqlite_template, self.sqlite_path)
            self.sides = self.run(self._open_both(f"sqlite:///{self.sqlite_path}", env.postgresql_url))
        except BaseException:
            self._release()
            raise

    async def _open_both(self, sqlite_url: str, postgresql_url: str) -> list[Side]:
        opened = await asyncio.gather(
            asyncio.wait_for(_open("sqlite", sqlite_url), TIMEOUT),
            asyncio.wait_for(_open("postgresql", postgresql_url), TIMEOUT),
            return_exceptions=True,
        )
        sides = [side for side in opened if isinstance(side, Side)]
        for failure in opened:
            if isinstance(failure, BaseException):
                await _gather(*(_close(side, CLEANUP_TIMEOUT) for side in sides))
                raise failure
        return sides

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        # The apps log on stdout, and on stderr through the handler that create_app installs.
        with contextlib.redirect_stdout(self.log), contextlib.redirect_stderr(self.log):
            return self.runner.run(coro)

    @contextlib.contextmanager
    def guard(self) -> Iterator[None]:
        """Mark the run as failed if the block raises: teardown then only cleans up."""
        try:
            yield
        except BaseException:
            self.failed = True
            raise

    # --- an exchange: the same requests to both sides, their outcomes compared

    async def _answer(self, side: Side, method: str, url: str, body: Body | None) -> Answer:
        if url == "/returns" and body is not None:
            items = [{**item, "sale_id": side.sale_id(item["sale_id"])} for item in _items(body)]
            body = items if isinstance(body, list) else items[0]
        elif url.startswith("/sales/#"):
            url = f"/sales/{side.sale_id(int(url[len('/sales/#') :]))}"
        if body is None:
            request = side.http.request(method, url)
        else:
            request = side.http.request(method, url, content=json.dumps(body), headers=JSON)
        waited = self.env.request_timeout
        try:
            return await asyncio.wait_for(request, waited)
        except TimeoutError:
            self.env.request_timeout = SHRINK_TIMEOUT
            if waited == TIMEOUT:
                return f"no answer within {waited:g} s"
            return f"no answer within {waited:g} s (shortened after a request went unanswered for {TIMEOUT:g} s)"
        except Exception as exc:
            return f"{type(exc).__name__}: {exc}"

    def _outcome(self, side: Side, answer: Answer, sent: Body | None) -> Outcome:
        if isinstance(answer, str):
            return ("no answer", answer)
        try:
            body = answer.json()
        except ValueError:
            body = answer.text
        if answer.status_code in (200, 201) and sent is not None:
            body = self._comparable(side, body, sent)
        elif answer.status_code == 422 and isinstance(body, dict):
            # A refused return names its sale by this side's id.
            body = json.loads(re.sub(r"sale ([0-9]+)", lambda m: side.ordinal(int(m.group(1))), json.dumps(body)))
        elif answer.status_code == 200 and isinstance(body, dict) and "returns" in body:  # GET /sales/{id}
            body = {**body, "id": side.ordinal(body["id"]), "returns": [self._return(side, r) for r in body["returns"]]}
        return (answer.status_code, body)

    @staticmethod
    def _return(side: Side, answer: dict[str, Any]) -> dict[str, Any]:
        return {**answer, "id": side.return_ordinal(answer["id"]), "sale_id": side.ordinal(answer["sale_id"])}

    @classmethod
    def _comparable(cls, side: Side, answer: Any, sent: Body) -> Any:
        items = _items(sent)
        answers = answer if isinstance(answer, list) else [answer]
        if len(answers) != len(items) or not all(isinstance(a, dict) for a in answers):
            return answer
        comparable = []
        for one, item in zip(answers, items, strict=True):
            one = {k: v for k, v in one.items() if k != "received_at"}
            if "sale_id" in one:  # a return
                one = cls._return(side, one)
                if "returned_at" not in item:
                    one.pop("returned_at", None)  # the arrival time
            elif "id" in one:
                one["id"] = side.ordinal(one["id"])
                if "sold_at" not in item:
                    one.pop("sold_at", None)  # the arrival time
            comparable.append(one)
        return comparable if isinstance(answer, list) else comparable[0]

    def exchange(self, requests: Sequence[Request]) -> None:
        """Send ``requests`` (at once, if more than one) to both sides; their outcomes must agree."""

        async def send(side: Side) -> list[Answer]:
            return await asyncio.gather(*(self._answer(side, *request) for request in requests))

        answers = self.run(_gather(*(send(side) for side in self.sides)))
        # Ids are numbered in request order on both sides, whatever order they were written in.
        outcomes = [
            [self._outcome(side, answer, body) for answer, (_, _, body) in zip(side_answers, requests, strict=True)]
            for side, side_answers in zip(self.sides, answers, strict=True)
        ]
        for i, (method, url, body) in enumerate(requests):
            mine = [side_outcomes[i] for side_outcomes in outcomes]
            if any(o != mine[0] for o in mine) or any(_broken(o) for o in mine):
                self.failed = True
                note("the apps' last log lines:\n" + "\n".join(self.log.lines))
                sent = f"{method} {url}" + (f" {json.dumps(body)}" if body is not None else "")
                if len(requests) > 1:
                    sent += f"  (request {i + 1} of {len(requests)} sent at once)"
                lines = [f"  {s.name:>10}: {o[0]} {json.dumps(o[1])}" for s, o in zip(self.sides, mine, strict=True)]
                raise AssertionError("\n".join([sent, *lines]))

    def post_sales(self, group: Sequence[Body]) -> None:
        self.posted.extend(group)
        self.exchange([("POST", "/sales", body) for body in group])

    # --- the rules

    @rule(body=bodies())
    def post(self, body: Body) -> None:
        with self.guard():
            self.post_sales([body])

    @rule(back=st.integers(0, 7), change=changes)
    def post_again(self, back: int, change: Change) -> None:
        """A request sent before (the ``back``-th latest, or the earliest), again: a retry, or changed."""
        if not self.posted:
            return
        body = change(self.posted[-1 - min(back, len(self.posted) - 1)])
        note(f"post_again sends {json.dumps(body)}")
        with self.guard():
            self.post_sales([body])

    @rule(group=concurrent_groups())
    def post_concurrently(self, group: list[Body]) -> None:
        with self.guard():
            self.post_sales(group)

    @rule(body=return_bodies())
    def post_return(self, body: Body) -> None:
        self.returned.append(body)
        with self.guard():
            self.exchange([("POST", "/returns", body)])

    @rule(back=st.integers(0, 3))
    def post_return_again(self, back: int) -> None:
        """A return sent before, again: a replay (or, if it was refused, judged again)."""
        if self.returned:
            with self.guard():
                self.exchange([("POST", "/returns", self.returned[-1 - min(back, len(self.returned) - 1)])])

    def teardown(self) -> None:
        try:
            if self.failed or not self.sides:
                return  # the failure is reported already: only clean up
            with self.guard():
                self.exchange(
                    [
                        ("GET", f"/reports/{report}" + ("" if month is None else f"?month={month}"), None)
                        for month in [None, *MONTHS]  # top-stores: the current month; top-products: all time
                        for report in ("top-stores", "top-products")
                    ]
                    + [("GET", f"/sales/#{ordinal}", None) for ordinal in range(len(self.sides[0].ids))]
                )
                sides, self.sides = self.sides, []
                problems = [p for p in self.run(_gather(*(_close(side) for side in sides))) if p]
                assert not problems, "\n".join(problems)
                stored = self.run(asyncio.wait_for(_gather(*(_stored(side) for side in sides)), TIMEOUT))
                for side, (_, found) in zip(sides, stored, strict=True):
                    assert not found, f"{side.name}: " + "; ".join(found)
                (sqlite_sales, _), (postgresql_sales, _) = stored
                assert sqlite_sales == postgresql_sales, (
                    f"stored rows differ: only on SQLite {list((sqlite_sales - postgresql_sales).elements())}, "
                    f"only on PostgreSQL {list((postgresql_sales - sqlite_sales).elements())}"
                )
        finally:
            self._release()

    def _release(self) -> None:
        """Shut down what is still open, end the event loop, remove the SQLite file."""
        try:
            if self.sides:
                self.run(_gather(*(_close(side, CLEANUP_TIMEOUT) for side in self.sides)))
        finally:
            self.sides = []
            self.runner.close()
            for suffix in ("", "-wal", "-shm"):
                Path(f"{self.sqlite_path}{suffix}").unlink(missing_ok=True)


SETTINGS = settings(
    max_examples=50,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    # No explain phase: the tracing it needs makes each of the shrinker's replays twice as slow.
    phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink],
)


class _RunsStateMachine(Protocol):
    """The signature of Hypothesis's ``run_state_machine_as_test``, which Hypothesis leaves unannotated."""

    def __call__(self, state_machine_factory: Callable[[], RuleBasedStateMachine], *, settings: settings) -> None: ...


run_as_test: _RunsStateMachine = run_state_machine_as_test


def test_sqlite_and_postgresql_answer_alike(pg_cluster: pg.Cluster, sqlite_template: Path, tmp_path: Path) -> None:
    env = Env(pg_cluster.url("salesreport"), sqlite_template, tmp_path)
    with _logging_restored():
        run_as_test(lambda: Differential(env), settings=SETTINGS)


@contextlib.contextmanager
def _logging_restored() -> Iterator[None]:
    """create_app points the root logger at the stderr of the moment (here, an example's log tail):
    restore it afterwards. httpx's line per request is left out meanwhile."""
    root, client = logging.getLogger(), logging.getLogger("httpx")
    handlers, level, client_level = root.handlers[:], root.level, client.level
    client.setLevel(logging.WARNING)
    try:
        yield
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
        client.setLevel(client_level)
