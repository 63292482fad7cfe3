"""Bad input, fuzzed: schemathesis against the served OpenAPI document, hypothesis against POST /sales.

Everything runs on SQLite and on the throwaway PostgreSQL (the ``settings`` fixture is
parametrized over both), through the real ASGI app, on a seeded catalog.

- Schemathesis loads /openapi.json from the app and runs every default check (no 5xx, documented
  status codes, content types, headers and response schemas, negative data rejected, positive data
  accepted, unsupported methods answered 405, declared auth enforced) on every operation, in
  positive and negative mode, with an owner key; then its stateful runner, over the links it infers
  itself (GET /products and GET /stores hand their ids to POST /sales; the document declares none).
- Hypothesis sends POST /sales bodies that must all be refused: one wrong field among good sales,
  any JSON value, deep nesting, huge numbers, odd Unicode, any bytes, non-JSON content types. Each
  gets a 4xx problem+json (status, title, detail) and nothing is stored. Likewise any ``month``
  that is not YYYY-MM.
- Properties of valid input: any idempotency key is stored and replayed as sent; the revenue of a
  month is exactly the sum of quantity times price; a sale lands in the month of its store's local
  calendar.

"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import uuid
from collections.abc import AsyncIterator, Collection
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import msgspec
import pytest
import schemathesis
from hypothesis import HealthCheck, assume, given, note, settings
from hypothesis import strategies as st
from schemathesis.config import SchemathesisConfig
from schemathesis.generation.modes import GenerationMode

from salesreport import auth, config, db
from salesreport.api import MAX_BODY, create_app
from salesreport.schemas import MAX_ID, MAX_PRICE, SalesIn
from tests.conftest import NOW, PRODUCTS, STORES, Clock, count_sales, seed

PRODUCT_IDS = [p["id"] for p in PRODUCTS]
STORE_IDS = [s["id"] for s in STORES]
FIELDS = ("product_id", "store_id", "quantity", "sold_at", "idempotency_key")
EARLIEST = datetime(2000, 1, 1, tzinfo=UTC)
JSON = {"content-type": "application/json"}
MONEY = re.compile(r"^[0-9]+\.[0-9]{2}$")

# The examples of one test share its app and database (function-scoped fixtures) on purpose.
FUZZ = settings(
    max_examples=50,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.fixture
async def http(client: httpx.AsyncClient) -> AsyncIterator[httpx.AsyncClient]:
    """The ``client`` app, reached like a server: an exception in the app is the 500 it answers."""
    transport = httpx.ASGITransport(app=client.app, raise_app_exceptions=False)  # type: ignore[attr-defined]
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as http:
        yield http


# --- schemathesis ------------------------------------------------------------------------


def _instant(text: str) -> datetime | None:
    """``text`` read as the service reads a date-time, or None."""
    try:
        return msgspec.json.decode(json.dumps(text), type=datetime)
    except msgspec.ValidationError:
        return None


def _acceptable(sale: Any) -> Any:
    """A schema-valid sale, moved inside the rules that the document cannot state.

    The document says "an integer 1..2^63-1", not "a product of the catalog"; nor "written without
    a fraction" (JSON Schema counts 3.0 as an integer), nor "from 2000 until now", nor "one key, one
    sale". Positive cases are made to follow those rules, so that the positive-data check holds the
    service to accepting every one of them. "Now" is ``NOW``, where ``api_schema`` stops the app's clock.
    """
    if not isinstance(sale, dict):
        return sale
    sale = dict(sale)
    for name in ("product_id", "store_id", "quantity"):
        if isinstance(sale.get(name), float) and sale[name].is_integer():
            sale[name] = int(sale[name])
    for name, known in (("product_id", PRODUCT_IDS), ("store_id", STORE_IDS)):
        value = sale.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and value not in known:
            sale[name] = known[value % len(known)]
    if isinstance(sale.get("sold_at"), str):
        instant = _instant(sale["sold_at"])
        # One the service cannot read stays: refusing a schema-valid date-time is a finding.
        if instant is not None and not EARLIEST <= instant <= NOW:
            sale["sold_at"] = None
    if isinstance(sale.get("idempotency_key"), str):
        # Unique, the generated characters kept but control characters (refused, as documented).
        sale["idempotency_key"] = CONTROL.sub("", sale["idempotency_key"])[:95] + "~" + uuid.uuid4().hex
    return sale


# Sales that positive POST /returns cases return units of: far more units than fuzzing can return.
RETURNABLE_SALES = 2000
RETURNABLE_UNITS = 10_000
_returnable = itertools.cycle(range(1, RETURNABLE_SALES + 1))


async def seed_returnable(settings: config.Settings) -> None:
    row = {
        "store_id": STORE_IDS[0],
        "product_id": PRODUCT_IDS[0],
        "quantity": RETURNABLE_UNITS,
        "unit_price": 10,
        "catalog_price": 10,
        "amount": 10 * RETURNABLE_UNITS,
        "sold_at": EARLIEST,
        "received_at": EARLIEST,
        "month": 200001,
        "idempotency_key": None,
    }
    database = db.connect(settings)
    try:
        async with database.writer.begin() as conn:
            await db.store_history(conn, [row] * RETURNABLE_SALES)
    finally:
        await database.dispose()


def _acceptable_return(item: Any) -> Any:
    """A schema-valid return, moved inside the rules the document cannot state: a sale that exists
    with units left (one unit each, spread over ``RETURNABLE_SALES`` sales), a store of the chain,
    after the sale and not after now, one key per return."""
    if not isinstance(item, dict):
        return item
    item = {**item, "sale_id": next(_returnable), "quantity": 1}
    value = item.get("store_id")
    if isinstance(value, float) and value.is_integer():
        item["store_id"] = value = int(value)
    if isinstance(value, int) and not isinstance(value, bool) and value not in STORE_IDS:
        item["store_id"] = STORE_IDS[value % len(STORE_IDS)]
    if isinstance(item.get("returned_at"), str):
        instant = _instant(item["returned_at"])
        if instant is not None and not EARLIEST <= instant <= NOW:
            item["returned_at"] = None
    if isinstance(item.get("idempotency_key"), str):
        item["idempotency_key"] = CONTROL.sub("", item["idempotency_key"])[:95] + "~" + uuid.uuid4().hex
    return item


def map_case(context: Any, case: Any) -> Any:
    """Schemathesis hook: positive POST /sales and /returns bodies made acceptable (see ``_acceptable``)."""
    positive = case.meta is not None and case.meta.generation.mode == GenerationMode.POSITIVE
    fix = {"/sales": _acceptable, "/returns": _acceptable_return}.get(case.operation.path)
    if positive and fix is not None and case.method.upper() == "POST":
        body = case.body
        case.body = [fix(item) for item in body] if isinstance(body, list) else fix(body)
    return case


async def owner_key(settings: config.Settings) -> str:
    database = db.connect(settings)
    try:
        async with database.writer.begin() as conn:
            _, key = await auth.create_key(conn, "owner", None)
    finally:
        await database.dispose()
    return key


@pytest.fixture
def api_schema(settings: config.Settings, clock: Clock) -> Any:
    """The OpenAPI document as the app serves it, on a seeded database with an owner key.

    With a key in the database every endpoint but /health requires one, as the document declares
    (scheme ``bearer``); schemathesis sends the key as that scheme's credentials, and its
    ignored-auth check sends each operation without it and with a wrong one, expecting 401.

    Schemathesis runs the app's lifespan itself, in the event loop of the thread it sends requests
    from, on the first request (here: fetching /openapi.json); its pytest plugin ends it when the
    test ends. So the lifespan is not run here too: the batcher and the pool belong to that loop.
    """
    asyncio.run(seed(settings, PRODUCTS, STORES))
    asyncio.run(seed_returnable(settings))
    key = asyncio.run(owner_key(settings))
    options = SchemathesisConfig.from_dict({"auth": {"openapi": {"bearer": {"bearer": key}}}})
    assert clock() == NOW  # what _acceptable takes for "now"
    schema = schemathesis.openapi.from_asgi("/openapi.json", create_app(settings, clock=clock), config=options)
    schema.hook(map_case)
    return schema


lazy_schema = schemathesis.pytest.from_fixture("api_schema")


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@lazy_schema.parametrize()
def test_every_operation_conforms_to_the_document(case: Any) -> None:
    case.call_and_validate()


def _nothing_left(case: Any, response: Any) -> bool:
    """A POST /returns refused only because its sales have no units left: the state machine may return
    the sale it just made twice, and the document cannot state how many units a sale has left."""
    if case.operation.path != "/returns" or response.status_code != 422:
        return False
    errors = json.loads(response.content).get("errors") or []
    return bool(errors) and all(" units left to return" in error["message"] for error in errors)


def test_stateful_sequences_conform_to_the_document(api_schema: Any) -> None:
    machine = api_schema.as_state_machine()

    class Machine(machine):  # type: ignore[misc,valid-type]
        def before_call(self, case: Any) -> None:
            # A step's body is made acceptable when generated, but a link may then merge in fields
            # from an earlier request (a refused one's too): made acceptable again, as sent.
            map_case(None, case)

        def validate_response(self, response: Any, case: Any, *args: Any, **kwargs: Any) -> None:
            if not _nothing_left(case, response):
                super().validate_response(response, case, *args, **kwargs)

    Machine.run(
        settings=settings(
            max_examples=25,
            stateful_step_count=6,
            deadline=None,
            suppress_health_check=list(HealthCheck),
        )
    )


# --- hypothesis: bodies that must be refused ------------------------------------------------------

SPECIAL = "\x00\x01\x1f\x7f\u0085\u00a0\u200b\u200e\u200f\u202e\u2028\u2029\ufeff\ufffd\uffff"
WORDS = "😀👩‍👩‍👧‍👦🏳️‍🌈شלום"  # emoji, joiners, right-to-left scripts
surrogates = st.integers(0xD800, 0xDFFF).map(chr)
plain_chars = st.one_of(st.characters(exclude_categories=["Cs"]), st.sampled_from(SPECIAL + WORDS))
CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")
key_chars = plain_chars.filter(lambda c: not CONTROL.search(c))  # what an idempotency key may hold
odd_chars = st.one_of(plain_chars, surrogates)
odd_text = st.text(odd_chars, max_size=20)

huge_ints = st.one_of(
    st.integers(),
    st.integers(min_value=MAX_ID - 2, max_value=2**70),
    st.integers(min_value=-(2**70), max_value=0),
    st.sampled_from([2**63, 2**64, 2**64 + 1, -(2**63) - 1, 10**400]),
)
floats = st.floats(allow_nan=False, allow_infinity=False)
json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), huge_ints, floats, odd_text),
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.one_of(st.sampled_from(FIELDS), odd_text), children, max_size=5),
    ),
    max_leaves=20,
)
# Number tokens that JSON text can hold and json.dumps never writes (plus some that are not JSON).
RAW_NUMBERS = ["1e999", "-1e999", "1E400", "1e-999", "1.0e0", "-0", "1" * 400, "NaN", "Infinity", "-Infinity", "0x10"]


def encode(value: Any, how: str) -> bytes:
    """JSON for ``value``: non-ASCII ``escaped`` as \\uXXXX, or ``raw`` UTF-8 where it can be."""
    if how == "raw":
        try:
            return json.dumps(value, ensure_ascii=False).encode()
        except UnicodeEncodeError:  # lone surrogates: escaped below (invalid UTF-8 has its own test)
            pass
    return json.dumps(value).encode()


def decodes_as_sales(body: bytes) -> bool:
    try:
        msgspec.json.decode(body, type=SalesIn)
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError, UnicodeDecodeError):
        return False
    return True


def assert_refused(response: httpx.Response, statuses: Collection[int]) -> dict[str, Any]:
    """A 4xx among ``statuses``, in the problem+json format."""
    assert response.status_code in statuses, f"{response.status_code}: {response.text}"
    assert response.headers["content-type"] == "application/problem+json", response.headers
    problem: dict[str, Any] = response.json()
    assert problem["status"] == response.status_code
    assert isinstance(problem["title"], str)
    assert problem["title"]
    assert isinstance(problem["detail"], str)
    assert problem["detail"]
    for error in problem.get("errors") or []:
        assert isinstance(error["field"], str)
        assert isinstance(error["message"], str)
        assert error["message"]
    return problem


async def post_bytes(http: httpx.AsyncClient, body: bytes, headers: dict[str, str] = JSON) -> httpx.Response:
    note(f"POST /sales {headers} {body[:500]!r}{'...' if len(body) > 500 else ''} ({len(body)} bytes)")
    return await http.post("/sales", content=body, headers=headers)


good_sales = st.fixed_dictionaries(
    {"product_id": st.sampled_from(PRODUCT_IDS), "store_id": st.sampled_from(STORE_IDS)},
    optional={"quantity": st.integers(1, 10_000), "idempotency_key": st.text(key_chars, min_size=1, max_size=8)},
)
not_an_int = st.one_of(
    st.none(),
    st.booleans(),
    floats,
    st.integers().map(str),
    odd_text,
    st.lists(st.integers(), max_size=2),
    st.dictionaries(odd_text, st.integers(), max_size=2),
)
WRONG: dict[str, st.SearchStrategy[Any]] = {
    "product_id": st.one_of(
        not_an_int,
        st.integers(max_value=0),
        st.integers(min_value=2**63),
        st.integers(1, 10**6).filter(lambda i: i not in PRODUCT_IDS),  # not in the catalog
    ),
    "store_id": st.one_of(
        not_an_int,
        st.integers(max_value=0),
        st.integers(min_value=2**63),
        st.integers(1, 10**6).filter(lambda i: i not in STORE_IDS),
    ),
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
        st.just(""),
        st.text(plain_chars, min_size=129, max_size=200),
        huge_ints,
        st.booleans(),
        st.lists(odd_text, max_size=3),
    ),
    "unknown field": json_values,
}


@st.composite
def bad_sale_bodies(draw: st.DrawFn) -> tuple[bytes, set[int], str, int | None]:
    """One sale with one wrong field, alone or among good ones: (body, statuses, field, index)."""
    sale = draw(good_sales)
    wrong = draw(st.sampled_from(sorted(WRONG)))
    field = wrong if wrong != "unknown field" else draw(odd_text.filter(lambda k: k not in FIELDS))
    sale[field] = draw(WRONG[wrong])
    raw = None
    if wrong in ("product_id", "store_id", "quantity") and draw(st.booleans()):
        raw = draw(st.sampled_from(RAW_NUMBERS))
        sale[field] = "@RAW@"
    index = None
    value: Any = sale
    if draw(st.booleans()):
        value = draw(st.lists(good_sales, max_size=4))
        index = draw(st.integers(0, len(value)))
        value.insert(index, sale)
    body = encode(value, draw(st.sampled_from(["escaped", "raw"])))
    if raw is not None:
        body = body.replace(b'"@RAW@"', raw.encode())
    # Lone surrogates (\ud800 escapes) and unreadable numbers are malformed JSON to msgspec: 400.
    statuses = {400, 422} if raw is not None or b"\\ud" in body else {422}
    # The service names a field as the JSON text spells it (surrogate pairs joined), cut at 64.
    return body, statuses, json.loads(json.dumps(field))[:64], index


@pytest.mark.anyio
@FUZZ
@given(case=bad_sale_bodies())
async def test_a_wrong_field_is_refused_and_named(
    http: httpx.AsyncClient, settings: config.Settings, case: tuple[bytes, set[int], str, int | None]
) -> None:
    body, statuses, field, index = case
    response = await post_bytes(http, body)
    problem = assert_refused(response, statuses)
    if response.status_code == 422:
        assert (field, index) in {(e["field"], e.get("index")) for e in problem["errors"]}, problem
    assert await count_sales(settings) == 0


@pytest.mark.anyio
@FUZZ
@given(value=json_values, how=st.sampled_from(["escaped", "raw"]))
async def test_any_json_value_that_is_not_a_sale_is_refused(
    http: httpx.AsyncClient, settings: config.Settings, value: Any, how: str
) -> None:
    body = encode(value, how)
    assume(not decodes_as_sales(body))
    assert_refused(await post_bytes(http, body), {400, 422})
    assert await count_sales(settings) == 0


@st.composite
def deep_bodies(draw: st.DrawFn) -> bytes:
    depth = draw(st.one_of(st.integers(1, 300), st.integers(300, 5000), st.sampled_from([10_000, 100_000])))
    opener, closer = draw(st.sampled_from([(b"[", b"]"), (b'{"product_id":', b"}"), (b'{"a":[', b"]}")]))
    nested = opener * depth + b"1" + closer * depth
    where = draw(st.sampled_from(["top", "field", "item", "unclosed"]))
    if where == "field":
        return b'{"product_id": 1, "store_id": ' + nested + b"}"
    if where == "item":
        return b'[{"product_id": 1, "store_id": 1}, ' + nested + b"]"
    if where == "unclosed":
        return opener * depth
    return nested


@pytest.mark.anyio
@FUZZ
@given(body=deep_bodies())
async def test_deep_nesting_is_refused(http: httpx.AsyncClient, settings: config.Settings, body: bytes) -> None:
    assert_refused(await post_bytes(http, body), {413} if len(body) > MAX_BODY else {400, 422})
    assert await count_sales(settings) == 0


@pytest.mark.anyio
@FUZZ
@given(
    body=st.one_of(
        st.binary(max_size=300),
        st.sampled_from([b"\xff\xfe{}", b"\xef\xbb\xbf{}", b'{"product_id": 1, "store_id": 1}\x00', b"\x00", b""]),
    ),
    content_type=st.sampled_from(["application/json", "application/problem+json", "application/json; charset=latin-1"]),
)
async def test_random_bytes_are_refused(
    http: httpx.AsyncClient, settings: config.Settings, body: bytes, content_type: str
) -> None:
    assume(not decodes_as_sales(body))
    assert_refused(await post_bytes(http, body, {"content-type": content_type}), {400, 422})
    assert await count_sales(settings) == 0


@st.composite
def invalid_utf8_bodies(draw: st.DrawFn) -> bytes:
    """A sale with bytes that are not UTF-8 inside one of its strings."""
    bad = draw(
        st.one_of(
            st.integers(0x80, 0xFF).map(lambda b: bytes([b])),  # a lone continuation or lead byte
            surrogates.map(lambda c: c.encode("utf-8", "surrogatepass")),  # an encoded surrogate
            st.sampled_from([b"\xc0\xaf", b"\xe0\x80\xaf", b"\xf4\x90\x80\x80", b"\xf8\x88\x80\x80\x80", b"\xe2\x82"]),
        )
    )
    text = b"k" + bad + draw(st.text(plain_chars, max_size=5)).encode()
    where = draw(st.sampled_from(["idempotency_key", "sold_at", "product_id", "name"]))
    if where == "name":
        return b'{"product_id": 1, "store_id": 1, "' + text + b'": 1}'
    return b'{"product_id": 1, "store_id": 1, "' + where.encode() + b'": "' + text + b'"}'


@pytest.mark.anyio
@FUZZ
@given(body=invalid_utf8_bodies())
async def test_invalid_utf8_in_a_string_is_400(http: httpx.AsyncClient, settings: config.Settings, body: bytes) -> None:
    assert_refused(await post_bytes(http, body), {400})
    assert await count_sales(settings) == 0


@pytest.mark.anyio
@FUZZ
@given(
    body=st.one_of(st.binary(max_size=100), good_sales.map(lambda s: json.dumps(s).encode())),
    content_type=st.one_of(
        st.sampled_from(["text/plain", "application/x-www-form-urlencoded", "multipart/form-data", "json", ""]),
        st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=30).filter(
            lambda t: "json" not in t.lower()
        ),
    ),
)
async def test_a_body_not_declared_json_is_415(
    http: httpx.AsyncClient, settings: config.Settings, body: bytes, content_type: str
) -> None:
    assert_refused(await post_bytes(http, body, {"content-type": content_type}), {415})
    assert await count_sales(settings) == 0


MONTH = re.compile(r"[0-9]{4}-(0[1-9]|1[0-2])")
months = st.one_of(
    st.from_regex(r"[0-9]{4}-[0-9]{2}", fullmatch=True),
    st.from_regex(r"\A[0-9]{1,5}-[0-9]{1,3}\Z"),
    st.text(plain_chars, max_size=12),
    st.tuples(st.from_regex(MONTH, fullmatch=True), st.sampled_from(SPECIAL + " \t\n\r+")).map("".join),
)


@pytest.mark.anyio
@FUZZ
@given(month=months, path=st.sampled_from(["/reports/top-stores", "/reports/top-products"]))
async def test_a_month_is_yyyy_mm_or_422(http: httpx.AsyncClient, month: str, path: str) -> None:
    note(f"GET {path} month={month!r}")
    response = await http.get(path, params={"month": month})
    if MONTH.fullmatch(month):
        assert response.status_code == 200, response.text
        assert isinstance(response.json(), list)
    else:
        problem = assert_refused(response, {422})
        assert [e["field"] for e in problem["errors"]] == ["month"]


@pytest.mark.anyio
@pytest.mark.parametrize("path", ["/reports/top-stores", "/reports/top-products"])
async def test_a_month_with_a_final_newline_is_422(http: httpx.AsyncClient, path: str) -> None:
    assert_refused(await http.get(path, params={"month": "2026-11\n"}), {422})


# --- valid input that the stores may well send ------------------------------------------------------


@pytest.mark.anyio
@FUZZ
@given(key=st.text(key_chars, min_size=1, max_size=128))
async def test_any_idempotency_key_is_stored_and_replayed_as_sent(http: httpx.AsyncClient, key: str) -> None:
    sale = {"product_id": 2, "store_id": 3, "quantity": 2, "idempotency_key": key}
    note(f"idempotency_key={key!r}")
    first = await http.post("/sales", content=json.dumps(sale, ensure_ascii=False).encode(), headers=JSON)
    assert first.status_code in (200, 201), first.text  # 200: an earlier example drew the same key
    assert first.json()["idempotency_key"] == key
    again = await http.post("/sales", content=json.dumps(sale).encode(), headers=JSON)
    assert again.status_code == 200, again.text
    assert again.json() == first.json()


@pytest.mark.anyio
async def test_a_control_character_in_a_key_fails_alone(http: httpx.AsyncClient, settings: config.Settings) -> None:
    """Refused with 422; the sales posted alongside it, perhaps in its batch, are stored."""
    nul = {"product_id": 1, "store_id": 1, "idempotency_key": "pos-1\x00"}
    sales = [{"product_id": 2, "store_id": 1, "idempotency_key": f"pos-1-{i}"} for i in range(4)]
    sales.insert(2, nul)
    answers = await asyncio.gather(*(http.post("/sales", json=sale) for sale in sales))
    statuses = [answer.status_code for answer in answers]
    assert statuses == [201, 201, 422, 201, 201], [(answer.status_code, answer.text) for answer in answers]
    assert await count_sales(settings) == 4


async def revenue(http: httpx.AsyncClient, store_id: int, month: str) -> Decimal:
    response = await http.get("/reports/top-stores", params={"month": month})
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
    http: httpx.AsyncClient,
    settings: config.Settings,
    price_list: list[int],
    lines: list[tuple[int, int]],
    store_id: int,
    month: tuple[int, int],
    as_array: bool,
) -> None:
    products: list[dict[str, Any]] = [
        {"id": next(_product_ids), "name": f"fuzz {price}", "price": price} for price in price_list
    ]
    await seed(settings, products, [])  # new products, new prices: the service picks them up
    label = f"{month[0]:04d}-{month[1]:02d}"
    sold_at = f"{label}-15T12:00:00Z"  # the 15th at noon is in this month in every time zone
    chosen = [(products[i % len(products)], quantity) for i, quantity in lines]
    sales = [{"product_id": p["id"], "store_id": store_id, "quantity": q, "sold_at": sold_at} for p, q in chosen]
    note(f"products={products} sales={sales} as_array={as_array}")
    before = await revenue(http, store_id, label)
    if as_array:
        response = await http.post("/sales", json=sales)
        assert response.status_code == 201, response.text
        stored = response.json()
    else:
        stored = []
        for sale in sales:
            response = await http.post("/sales", json=sale)
            assert response.status_code == 201, response.text
            stored.append(response.json())
    for (product, quantity), row in zip(chosen, stored, strict=True):
        assert row["unit_price"] == f"{cents(product['price']):.2f}"
        assert MONEY.match(row["amount"]), row
        assert Decimal(row["amount"]) == cents(product["price"]) * quantity
    expected = sum((cents(p["price"]) * q for p, q in chosen), Decimal(0))
    assert await revenue(http, store_id, label) - before == expected


def _month(instant: datetime) -> str:
    return f"{instant.year:04d}-{instant.month:02d}"


def _shift(label: str, months: int) -> str:
    year, month = map(int, label.split("-"))
    index = year * 12 + month - 1 + months
    return f"{index // 12:04d}-{index % 12 + 1:02d}"


# The latest instant drawn: a minute before the app's clock (``NOW``, where the ``client`` fixture keeps it).
LATEST = NOW.replace(tzinfo=None) - timedelta(minutes=1)


@st.composite
def instants(draw: st.DrawFn) -> datetime:
    """Any instant since 2000, or one within a day of a month's start (where the zones disagree)."""
    if draw(st.booleans()):
        return draw(st.datetimes(min_value=datetime(2000, 1, 1), max_value=LATEST, timezones=st.just(UTC)))
    first = datetime(draw(st.integers(2000, LATEST.year)), draw(st.integers(1, 12)), 1, tzinfo=UTC)
    instant = first + timedelta(seconds=draw(st.integers(-86_400, 86_400)))
    assume(EARLIEST <= instant <= LATEST.replace(tzinfo=UTC))
    return instant


@pytest.mark.anyio
@settings(FUZZ, max_examples=30)
@given(
    instant=instants(),
    store=st.sampled_from(STORES),
    offset=st.integers(-14 * 60, 14 * 60),
    quantity=st.integers(1, 100),
)
async def test_a_sale_lands_in_the_month_of_its_stores_calendar(
    http: httpx.AsyncClient, instant: datetime, store: dict[str, Any], offset: int, quantity: int
) -> None:
    local = _month(instant.astimezone(ZoneInfo(store["timezone"])))
    watched = {_shift(local, -1), local, _shift(local, 1), _month(instant)}
    before = {label: await revenue(http, store["id"], label) for label in watched}
    # The instant as a client in any UTC offset may write it.
    sold_at = instant.astimezone(timezone(timedelta(minutes=offset))).isoformat()
    sale = {"product_id": 1, "store_id": store["id"], "quantity": quantity, "sold_at": sold_at}
    note(f"sale={sale} timezone={store['timezone']} local month={local}")
    response = await http.post("/sales", json=sale)
    assert response.status_code == 201, response.text
    assert datetime.fromisoformat(response.json()["sold_at"]) == instant
    price = cents(next(p["price"] for p in PRODUCTS if p["id"] == 1))
    for label in sorted(watched):
        gained = await revenue(http, store["id"], label) - before[label]
        assert gained == (price * quantity if label == local else 0), (label, local, sold_at)
