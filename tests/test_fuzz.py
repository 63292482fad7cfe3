"""Bad input, fuzzed: schemathesis against the served OpenAPI document, hypothesis against POST /sales.

Everything runs on SQLite and on the throwaway PostgreSQL (the ``settings`` fixture is
parametrized over both) through the real ASGI app, the catalog seeded.

- Schemathesis loads /openapi.json from the app and runs every default check (no 5xx, documented
  status codes, content types, headers and response schemas, negative data rejected, positive data
  accepted, unsupported methods answered 405) on every operation, then its stateful runner over the
  links it infers (GET /products and GET /stores feed ids to POST /sales).
- Hypothesis sends POST /sales bodies that must all be refused: deep nesting, huge numbers, odd
  Unicode, wrong types, any JSON value, any bytes. Each gets a 4xx problem+json and nothing is stored.
- Two properties of valid sales: revenue is the exact sum of quantity × price, and a sale lands in
  the month of its store's local calendar.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import uuid
from collections.abc import Collection
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import msgspec
import pytest
import schemathesis
from hypothesis import HealthCheck, assume, given, settings, strategies as st
from schemathesis.generation.modes import GenerationMode

from salesreport import config
from salesreport.api import create_app
from salesreport.catalog import MAX_PRICE
from salesreport.schemas import MAX_ID, SalesIn
from tests.conftest import PRODUCTS, STORES, count_sales, seed

PRODUCT_IDS = [p["id"] for p in PRODUCTS]
STORE_IDS = [s["id"] for s in STORES]
FIELDS = ("product_id", "store_id", "quantity", "sold_at", "idempotency_key")
EARLIEST = datetime(2000, 1, 1, tzinfo=UTC)
JSON = {"content-type": "application/json"}
MONEY = re.compile(r"^[0-9]+\.[0-9]{2}$")

# Function-scoped fixtures (the app, its database) are shared by the examples of a test on purpose.
FUZZ = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


# --- schemathesis ------------------------------------------------------------------


def _acceptable(sale: Any) -> Any:
    """A schema-valid sale, made acceptable under the rules the schema cannot state.

    The document can say "an integer 1..2^63-1" but not "a product of the catalog", nor "written
    without a fraction", nor "not before 2000 and not in the future", nor "one key, one sale". Positive cases are moved inside those
    rules so that the positive-data check holds the service to answering them 2xx.
    """
    if not isinstance(sale, dict):
        return sale
    sale = dict(sale)
    for name in ("product_id", "store_id", "quantity"):
        value = sale.get(name)
        if isinstance(value, float) and value.is_integer():
            # JSON Schema counts 3.0 as an integer; the service wants ids and quantities written
            # as integers (the rule, which no JSON Schema keyword can state).
            sale[name] = int(value)
    for name, known in (("product_id", PRODUCT_IDS), ("store_id", STORE_IDS)):
        value = sale.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and value not in known:
            sale[name] = known[value % len(known)]
    sold_at = sale.get("sold_at")
    if isinstance(sold_at, str):
        try:
            instant = datetime.fromisoformat(sold_at)
        except ValueError:
            pass  # a date-time Python cannot read is left to the service: 422 would be a finding
        else:
            if instant.tzinfo is not None and not EARLIEST <= instant <= datetime.now(UTC):
                sale["sold_at"] = None
    key = sale.get("idempotency_key")
    if isinstance(key, str):
        # Keep the generated characters, make the key unique: a reused key is a documented 422.
        sale["idempotency_key"] = key[:96] + "~" + uuid.uuid4().hex
    return sale


def map_case(context: Any, case: Any) -> Any:
    if case.operation.path != "/sales" or case.meta is None:
        return case
    if case.meta.generation.mode != GenerationMode.POSITIVE:
        return case
    body = case.body
    if isinstance(body, list):
        case.body = [_acceptable(item) for item in body]
    else:
        case.body = _acceptable(body)
    return case


@pytest.fixture
def api_schema(settings: config.Settings) -> Any:
    """The OpenAPI document as the app serves it, on a seeded database.

    Schemathesis runs the app's lifespan itself, in the event loop of its own thread, on the first
    request (here: fetching /openapi.json); its pytest plugin shuts it down when the test ends. So
    the lifespan must not also be run here: the batcher and the connection pool belong to that loop.
    """
    asyncio.run(seed(settings, PRODUCTS, STORES))
    schema = schemathesis.openapi.from_asgi("/openapi.json", create_app(settings))
    schema.hook(map_case)
    return schema


lazy_schema = schemathesis.pytest.from_fixture("api_schema")


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@lazy_schema.parametrize()
def test_every_operation_conforms(case: Any) -> None:
    case.call_and_validate()


def test_stateful_sequences_conform(api_schema: Any) -> None:
    machine = api_schema.as_state_machine()
    machine.run(
        settings=settings(
            max_examples=25,
            stateful_step_count=6,
            deadline=None,
            suppress_health_check=list(HealthCheck),
        )
    )


# --- hypothesis: bad bodies ------------------------------------------------------------

SPECIAL = "\x00\x01\x1f\x7f\u0085\u00a0\u200b\u200e\u200f\u202e\u2028\u2029\ufeff\ufffd\uffff"
EMOJI = "😀👩‍👩‍👧‍👦🏳️‍🌈"
surrogates = st.integers(0xD800, 0xDFFF).map(chr)
odd_chars = st.one_of(st.characters(), st.sampled_from(SPECIAL + EMOJI + "شלום"), surrogates)
odd_text = st.text(odd_chars, max_size=20)

huge_ints = st.one_of(
    st.integers(),
    st.integers(min_value=MAX_ID - 2, max_value=2**70),
    st.integers(min_value=-(2**70), max_value=0),
    st.sampled_from([2**63, 2**64, 2**64 + 1, -(2**63) - 1, 10**400]),
)
floats = st.floats(allow_nan=False, allow_infinity=False)
scalars = st.one_of(st.none(), st.booleans(), huge_ints, floats, odd_text)
json_values = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.one_of(st.sampled_from(FIELDS), odd_text), children, max_size=5),
    ),
    max_leaves=20,
)
# Number tokens that JSON text can hold and Python's json cannot write.
RAW_NUMBERS = ["1e999", "-1e999", "1E400", "1e-999", "1.0e0", "-0", "1" * 400, "NaN", "Infinity", "-Infinity", "0x10"]


def encode(value: Any, how: str) -> bytes:
    """JSON bytes for ``value``; lone surrogates either escaped (valid JSON) or raw (invalid UTF-8)."""
    if how == "escaped":
        return json.dumps(value, ensure_ascii=True).encode()
    return json.dumps(value, ensure_ascii=False).encode("utf-8", "surrogatepass")


def decodes_as_sales(body: bytes) -> bool:
    try:
        msgspec.json.decode(body, type=SalesIn)
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
        return False
    return True


def assert_refused(response: httpx.Response, statuses: Collection[int] | None = None) -> dict[str, Any]:
    status = response.status_code
    assert 400 <= status < 500, f"{status}: {response.text}"
    if statuses is not None:
        assert status in statuses, f"{status}: {response.text}"
    assert response.headers["content-type"] == "application/problem+json", response.headers
    problem = response.json()
    assert problem["status"] == status
    assert isinstance(problem["title"], str) and problem["title"]
    assert isinstance(problem["detail"], str) and problem["detail"]
    for error in problem.get("errors") or []:
        assert isinstance(error["field"], str) and isinstance(error["message"], str) and error["message"]
    return problem


async def post_bytes(client: httpx.AsyncClient, body: bytes, headers: dict[str, str] = JSON) -> httpx.Response:
    return await client.post("/sales", content=body, headers=headers)


good_sales = st.fixed_dictionaries(
    {"product_id": st.sampled_from(PRODUCT_IDS), "store_id": st.sampled_from(STORE_IDS)},
    optional={"quantity": st.integers(1, 10_000), "idempotency_key": st.just("fuzz")},
)

not_an_int = st.one_of(
    st.none(),
    st.booleans(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.integers().map(str),
    odd_text,
    st.lists(st.integers(), max_size=2),
    st.dictionaries(odd_text, st.integers(), max_size=2),
)
WRONG: dict[str, st.SearchStrategy[Any]] = {
    "product_id": st.one_of(
        not_an_int, st.integers(max_value=0), st.integers(min_value=2**63), st.integers(5, 10**6).filter(
            lambda i: i not in PRODUCT_IDS
        )
    ),
    "store_id": st.one_of(not_an_int, st.integers(max_value=0), st.integers(min_value=2**63), st.integers(5, 10**6)),
    "quantity": st.one_of(not_an_int, st.integers(max_value=0), st.integers(min_value=10_001)),
    "sold_at": st.one_of(
        st.booleans(),
        huge_ints,
        floats,
        odd_text,
        st.datetimes().map(datetime.isoformat),  # no offset
        st.datetimes(max_value=datetime(1999, 12, 31, 23, 59), timezones=st.just(UTC)).map(datetime.isoformat),
        st.datetimes(min_value=datetime(2100, 1, 1), timezones=st.just(UTC)).map(datetime.isoformat),
        st.sampled_from(["2026-13-01T00:00:00Z", "2026-02-30T00:00:00Z", "2026-11-01 10:00", "yesterday", ""]),
    ),
    "idempotency_key": st.one_of(
        st.just(""), st.text(odd_chars, min_size=129, max_size=200), huge_ints, st.booleans(), st.lists(odd_text)
    ),
    "extra": json_values,
}


@st.composite
def bad_sale_bodies(draw: st.DrawFn) -> tuple[bytes, set[int], str, int | None]:
    """A body of sales of which one has one wrong field: (body, accepted statuses, field, index)."""
    sale = draw(good_sales)
    field = draw(st.sampled_from(sorted(WRONG)))
    name = field if field != "extra" else draw(odd_text.filter(lambda k: k not in FIELDS))
    sale[name] = draw(WRONG[field])
    raw = None
    if field in ("product_id", "store_id", "quantity") and draw(st.booleans()):
        raw = draw(st.sampled_from(RAW_NUMBERS))
        sale[name] = "@RAW@"
    as_array = draw(st.booleans())
    index = None
    if as_array:
        others = draw(st.lists(good_sales, max_size=4))
        index = draw(st.integers(0, len(others)))
        others.insert(index, sale)
        value: Any = others
    else:
        value = sale
    body = encode(value, draw(st.sampled_from(["escaped", "raw"])))
    if raw is not None:
        body = body.replace(b'"@RAW@"', raw.encode())
        return body, {400, 422}, name, index
    return body, {400, 422} if b"\\ud" in body or b"\xed" in body else {422}, name, index


@pytest.mark.anyio
@FUZZ
@given(case=bad_sale_bodies())
async def test_one_wrong_field_is_refused_and_named(
    client: httpx.AsyncClient, settings: config.Settings, case: tuple[bytes, set[int], str, int | None]
) -> None:
    body, statuses, field, index = case
    response = await post_bytes(client, body)
    problem = assert_refused(response, statuses)
    if response.status_code == 422:
        named = {(e["field"], e.get("index")) for e in problem["errors"]}
        assert (field[:64], index) in named, problem
    assert await count_sales(settings) == 0


@pytest.mark.anyio
@FUZZ
@given(value=json_values, how=st.sampled_from(["escaped", "raw"]))
async def test_any_json_value_that_is_not_a_sale_is_refused(
    client: httpx.AsyncClient, settings: config.Settings, value: Any, how: str
) -> None:
    body = encode(value, how)
    assume(not decodes_as_sales(body))
    assert_refused(await post_bytes(client, body), {400, 422})
    assert await count_sales(settings) == 0


@st.composite
def deep_bodies(draw: st.DrawFn) -> bytes:
    depth = draw(st.one_of(st.integers(1, 300), st.integers(300, 5000), st.sampled_from([10_000, 100_000])))
    opener, closer = draw(st.sampled_from([(b"[", b"]"), (b'{"product_id":', b"}"), (b'{"a":[', b"]}")]))
    nested = opener * depth + b"1" + closer * depth
    where = draw(st.sampled_from(["top", "field", "array", "unclosed"]))
    if where == "field":
        return b'{"product_id": 1, "store_id": ' + nested + b"}"
    if where == "array":
        return b'[{"product_id": 1, "store_id": 1}, ' + nested + b"]"
    if where == "unclosed":
        return opener * depth
    return nested


@pytest.mark.anyio
@FUZZ
@given(body=deep_bodies())
async def test_deep_nesting_is_refused(client: httpx.AsyncClient, settings: config.Settings, body: bytes) -> None:
    assert_refused(await post_bytes(client, body), {400, 422})
    assert await count_sales(settings) == 0


@pytest.mark.anyio
@FUZZ
@given(
    body=st.one_of(
        st.binary(max_size=300),
        st.binary(max_size=50).map(lambda b: b'{"product_id": 1, "store_id": 1, "idempotency_key": "' + b + b'"}'),
        st.sampled_from([b"\xff\xfe{}", b"\xef\xbb\xbf{}", b'{"product_id": 1, "store_id": 1}\x00', b"\x00"]),
    ),
    content_type=st.sampled_from(["application/json", "application/problem+json", "application/json; charset=latin-1"]),
)
async def test_random_bytes_are_refused(
    client: httpx.AsyncClient, settings: config.Settings, body: bytes, content_type: str
) -> None:
    assume(not decodes_as_sales(body))
    assert_refused(await post_bytes(client, body, {"content-type": content_type}), {400, 422})
    assert await count_sales(settings) == 0


@pytest.mark.anyio
@FUZZ
@given(
    body=st.one_of(st.binary(max_size=100), good_sales.map(lambda s: json.dumps(s).encode())),
    content_type=st.one_of(
        st.sampled_from(["text/plain", "application/x-www-form-urlencoded", "multipart/form-data", "", "json"]),
        st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=30).filter(
            lambda t: "json" not in t.lower()
        ),
    ),
)
async def test_bodies_that_are_not_declared_json_are_415(
    client: httpx.AsyncClient, settings: config.Settings, body: bytes, content_type: str
) -> None:
    assert_refused(await post_bytes(client, body, {"content-type": content_type}), {415})
    assert await count_sales(settings) == 0


# --- hypothesis: valid sales ----------------------------------------------------------------


async def revenue(client: httpx.AsyncClient, store_id: int, month: str) -> Decimal:
    response = await client.get("/reports/top-stores", params={"month": month})
    assert response.status_code == 200, response.text
    for row in response.json():
        assert MONEY.match(row["revenue"]), row
        if row["id"] == store_id:
            return Decimal(row["revenue"])
    return Decimal(0)


def cents(value: int) -> Decimal:
    return Decimal(value) / 100


_product_ids = itertools.count(1_000_000)
prices = st.one_of(st.integers(1, MAX_PRICE), st.sampled_from([1, 10, 99, 100, 333, 4550, MAX_PRICE]))


@pytest.mark.anyio
@settings(FUZZ, max_examples=30)
@given(
    price_list=st.lists(prices, min_size=1, max_size=3),
    lines=st.lists(st.tuples(st.integers(0, 2), st.integers(1, 10_000)), min_size=1, max_size=8),
    store_id=st.sampled_from(STORE_IDS),
    month=st.tuples(st.integers(2000, 2025), st.integers(1, 12)),
    as_array=st.booleans(),
)
async def test_revenue_is_the_exact_sum_of_quantity_times_price(
    client: httpx.AsyncClient,
    settings: config.Settings,
    price_list: list[int],
    lines: list[tuple[int, int]],
    store_id: int,
    month: tuple[int, int],
    as_array: bool,
) -> None:
    products = [{"id": next(_product_ids), "name": f"p{price}", "price": price} for price in price_list]
    await seed(settings, products, [])
    year, mon = month
    label = f"{year:04d}-{mon:02d}"
    sold_at = f"{label}-15T12:00:00Z"  # the 15th: the same month in every time zone
    sales = [
        {"product_id": products[i % len(products)]["id"], "store_id": store_id, "quantity": q, "sold_at": sold_at}
        for i, q in lines
    ]
    expected = sum((cents(products[i % len(products)]["price"]) * q for i, q in lines), Decimal(0))
    before = await revenue(client, store_id, label)
    if as_array:
        response = await client.post("/sales", json=sales)
        assert response.status_code == 201, response.text
        stored = response.json()
    else:
        stored = []
        for sale in sales:
            response = await client.post("/sales", json=sale)
            assert response.status_code == 201, response.text
            stored.append(response.json())
    for sale, row in zip(sales, stored, strict=True):
        price = next(p["price"] for p in products if p["id"] == sale["product_id"])
        assert row["unit_price"] == f"{cents(price):.2f}"
        assert Decimal(row["amount"]) == cents(price) * sale["quantity"]
        assert MONEY.match(row["amount"])
    assert await revenue(client, store_id, label) - before == expected


def _month(instant: datetime) -> str:
    return f"{instant.year:04d}-{instant.month:02d}"


def _shift(label: str, months: int) -> str:
    year, month = map(int, label.split("-"))
    index = year * 12 + month - 1 + months
    return f"{index // 12:04d}-{index % 12 + 1:02d}"


LATEST = datetime.now(UTC).replace(tzinfo=None) - timedelta(minutes=1)


@st.composite
def instants(draw: st.DrawFn) -> datetime:
    """Any instant since 2000, or one within a day of the start of a month (where zones disagree)."""
    if draw(st.booleans()):
        return draw(st.datetimes(min_value=datetime(2000, 1, 1), max_value=LATEST, timezones=st.just(UTC)))
    year = draw(st.integers(2000, LATEST.year))
    month = draw(st.integers(1, 12))
    offset = draw(st.integers(-86_400, 86_400))
    instant = datetime(year, month, 1, tzinfo=UTC) + timedelta(seconds=offset)
    assume(EARLIEST <= instant <= LATEST.replace(tzinfo=UTC))
    return instant


@pytest.mark.anyio
@settings(FUZZ, max_examples=30)
@given(
    instant=instants(),
    store=st.sampled_from(STORES),
    offset_minutes=st.integers(-14 * 60, 14 * 60),
    quantity=st.integers(1, 100),
)
async def test_a_sale_lands_in_the_month_of_its_stores_calendar(
    client: httpx.AsyncClient, instant: datetime, store: dict[str, Any], offset_minutes: int, quantity: int
) -> None:
    local = _month(instant.astimezone(ZoneInfo(store["timezone"])))
    watched = {_shift(local, -1), local, _shift(local, 1), _month(instant)}
    before = {label: await revenue(client, store["id"], label) for label in watched}
    # The instant as a client in any UTC offset may write it.
    sold_at = instant.astimezone(timezone(timedelta(minutes=offset_minutes))).isoformat()
    sale = {"product_id": 1, "store_id": store["id"], "quantity": quantity, "sold_at": sold_at}
    response = await client.post("/sales", json=sale)
    assert response.status_code == 201, response.text
    assert datetime.fromisoformat(response.json()["sold_at"]) == instant
    price = cents(next(p["price"] for p in PRODUCTS if p["id"] == 1))
    for label in watched:
        gained = await revenue(client, store["id"], label) - before[label]
        assert gained == (price * quantity if label == local else 0), (label, local, sold_at)

