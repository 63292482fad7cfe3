"""Bodies sent gzip-compressed to the clients that accept it: the pages, the reports, the catalog, the
static files; each the same content as its plain form, compressed once, and never for a client that
refused gzip."""

from __future__ import annotations

import asyncio
import gzip
import random
from typing import Any

import httpx
import pytest
from starlette.requests import Request

from salesreport import compression, config
from salesreport.compression import Encoded
from salesreport.headers import MAX_HEADER
from salesreport.web.assets import URLS
from tests.conftest import eventually, seed

pytestmark = pytest.mark.anyio
# Compression does not depend on the database: the HTTP tests run on SQLite only.
SQLITE = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)

MONTH = "2026-06"
GZIP = {"accept-encoding": "gzip, deflate, br"}
PLAIN = {"accept-encoding": "identity"}
MANY_PRODUCTS = [{"id": i, "name": f"Product number {i}", "price": 100 + i} for i in range(100, 160)]


@pytest.mark.parametrize(
    ("header", "accepted"),
    [
        ("gzip", True),
        ("GZip", True),
        ("x-gzip", True),
        ("deflate, gzip;q=0.5, br", True),
        ("gzip ; Q=1.000", True),
        ("gzip;q=0.001", True),
        ("*", True),
        ("br;q=1, *;q=0.1", True),
        ("", False),
        ("identity", False),
        ("br, zstd", False),
        ("gzip;q=0", False),
        ("gzip;q=0.000", False),
        ("*;q=0.5, gzip;q=0", False),
        ("*;q=0", False),
        ("gzipped", False),
        ("gzip;q=high", False),  # not a number: refused rather than guessed (as for Accept, see accept.weights)
        ("gzip;q=nan", False),
        ("gzip;q=-1", False),
        ("gzip;q=0, gzip", False),  # the RFC does not say: a refusal is safer
    ],
)
def test_accept_encoding_is_read_as_rfc_9110_says(header: str, accepted: bool) -> None:
    assert compression._gzip_acceptable(header) is accepted


def test_accept_encoding_headers_are_taken_together() -> None:
    def request(*values: bytes) -> Request:
        return Request({"type": "http", "headers": [(b"accept-encoding", v) for v in values]})

    assert compression.accepts_gzip(request(b"br", b"gzip"))
    assert not compression.accepts_gzip(request(b"br", b"gzip;q=0"))
    assert not compression.accepts_gzip(request())


async def test_a_body_is_compressed_once_and_a_small_one_never() -> None:
    asks = Request({"type": "http", "headers": [(b"accept-encoding", b"gzip")]})
    body = Encoded(b"x" * 5000)
    first, headers = await body.choose(asks)
    again, _ = await body.choose(asks)
    assert again is first and gzip.decompress(first) == body.plain
    assert dict(headers) == {b"content-encoding": b"gzip", b"vary": b"accept-encoding"}
    small = Encoded(b"x" * (compression.MIN_SIZE - 1))
    assert await small.choose(asks) == (small.plain, [])


async def test_a_large_body_is_compressed_once_in_a_thread_whoever_asks_meanwhile(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    asks = Request({"type": "http", "headers": [(b"accept-encoding", b"gzip")]})
    plain = b"".join(b"%d," % i for i in range(compression.THREAD_SIZE // 4))
    assert len(plain) >= compression.THREAD_SIZE
    threads: list[object] = []
    to_thread = asyncio.to_thread

    async def counted(function: Any, *args: Any, **kwargs: Any) -> Any:
        threads.append(function)
        return await to_thread(function, *args, **kwargs)

    monkeypatch.setattr(asyncio, "to_thread", counted)
    body = Encoded(plain)
    # One of them goes away while the compression runs: the others still get it, and it is kept.
    gone = asyncio.ensure_future(body.choose(asks))
    await asyncio.sleep(0)
    gone.cancel()
    answers = await asyncio.gather(*(body.choose(asks) for _ in range(8)))
    assert threads == [compression._packed]
    assert {id(sent) for sent, _ in answers} == {id(answers[0][0])}
    assert gzip.decompress(answers[0][0]) == plain and answers[0][1] == compression.GZIP
    assert (await body.choose(asks))[0] is answers[0][0] and threads == [compression._packed]


async def test_a_body_gzip_cannot_shrink_is_sent_plain() -> None:
    asks = Request({"type": "http", "headers": [(b"accept-encoding", b"gzip")]})
    noise = Encoded(random.Random(0).randbytes(4000))
    assert await noise.choose(asks) == (noise.plain, compression.PLAIN)


def test_an_accept_encoding_too_long_to_read_is_taken_as_not_sent() -> None:
    def request(value: bytes) -> Request:
        return Request({"type": "http", "headers": [(b"accept-encoding", value)]})

    assert compression.accepts_gzip(request(b" " * (MAX_HEADER - 4) + b"gzip"))
    # Cut short, these would read as accepting gzip: they refuse it.
    for refusal in (
        b"br," + b" " * 993 + b"gzip;q=0",
        b"*," + b" " * 1000 + b"gzip;q=0",
        b"br," + b" " * 996 + b"*;q=0",
    ):
        assert not compression.accepts_gzip(request(refusal))
    compression._gzip_acceptable.cache_clear()
    for i in range(300):
        assert not compression.accepts_gzip(request(b"gzip," * 20_000 + str(i).encode()))
    assert compression._gzip_acceptable.cache_info().currsize == 0


async def test_a_body_that_cannot_be_compressed_is_sent_plain(monkeypatch: pytest.MonkeyPatch) -> None:
    asks = Request({"type": "http", "headers": [(b"accept-encoding", b"gzip")]})

    def fails(*args: Any, **kwargs: Any) -> bytes:
        raise MemoryError

    monkeypatch.setattr(gzip, "compress", fails)
    for size in (5000, compression.THREAD_SIZE):
        body = Encoded(b"x" * size)
        for _ in range(2):
            assert await body.choose(asks) == (body.plain, compression.PLAIN)


async def test_a_body_with_no_thread_to_compress_it_is_sent_plain(monkeypatch: pytest.MonkeyPatch) -> None:
    asks = Request({"type": "http", "headers": [(b"accept-encoding", b"gzip")]})

    async def no_thread(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("can't start new thread")

    monkeypatch.setattr(asyncio, "to_thread", no_thread)
    body = Encoded(b"z" * compression.THREAD_SIZE)
    for _ in range(3):
        assert await body.choose(asks) == (body.plain, compression.PLAIN)


def test_a_compression_cut_short_with_its_event_loop_starts_again_in_the_next() -> None:
    asks = Request({"type": "http", "headers": [(b"accept-encoding", b"gzip")]})
    body = Encoded(b"y" * compression.THREAD_SIZE)

    async def leave_it_running() -> asyncio.Future[Any]:
        left = asyncio.ensure_future(body.choose(asks))
        await asyncio.sleep(0)  # the compression has begun; the loop ends, cancelling it
        return left

    assert asyncio.run(leave_it_running()).cancelled()
    assert body._packing is not None and body._packing.cancelled()  # the compression was cut short
    sent, headers = asyncio.run(body.choose(asks))
    assert gzip.decompress(sent) == body.plain and headers == compression.GZIP


async def both(client: httpx.AsyncClient, path: str) -> tuple[httpx.Response, httpx.Response]:
    """``path`` asked for by a client that accepts gzip and by one that refuses it."""
    packed = await client.get(path, headers=GZIP)
    plain = await client.get(path, headers=PLAIN)
    assert packed.status_code == plain.status_code == 200, (packed.text, plain.text)
    return packed, plain


def assert_same_content(packed: httpx.Response, plain: httpx.Response) -> None:
    assert packed.headers["content-encoding"] == "gzip"
    assert "content-encoding" not in plain.headers
    for response in (packed, plain):
        (vary,) = response.headers.get_list("vary")  # one Vary, naming Accept-Encoding once
        assert [v.strip().lower() for v in vary.split(",")].count("accept-encoding") == 1
    assert int(packed.headers["content-length"]) < int(plain.headers["content-length"]) / 2
    assert packed.content == plain.content  # httpx decoded the gzip
    assert packed.headers["content-type"] == plain.headers["content-type"]


@SQLITE
async def test_the_dashboard_page_and_its_fragment(client: httpx.AsyncClient) -> None:
    packed, plain = await both(client, f"/?month={MONTH}")
    assert_same_content(packed, plain)
    assert packed.headers["cache-control"] == "no-store"  # the page's own headers are kept
    packed, plain = await both(client, f"/?month={MONTH}&fragment=1")
    assert_same_content(packed, plain)
    # Two encodings of one content: one weak ETag, which revalidates either.
    tag = packed.headers["etag"]
    assert tag.startswith('W/"') and plain.headers["etag"] == tag
    for known in (tag, tag.removeprefix("W/"), f'"other", {tag}'):
        again = await client.get(f"/?month={MONTH}&fragment=1", headers={**GZIP, "if-none-match": known})
        assert again.status_code == 304 and again.content == b"", known
        assert again.headers["etag"] == tag and again.headers["vary"] == "accept-encoding"  # as its 200 would
    other = await client.get(f"/?month={MONTH}&fragment=1", headers={**GZIP, "if-none-match": 'W/"other"'})
    assert other.status_code == 200
    # An If-None-Match too long to read is taken as not sent.
    filler = '"x", ' * (MAX_HEADER // 5)
    long = await client.get(f"/?month={MONTH}&fragment=1", headers={**GZIP, "if-none-match": tag + ", " + filler})
    assert long.status_code == 200 and long.content == packed.content


@SQLITE
async def test_the_catalog_and_a_report(client: httpx.AsyncClient, settings: config.Settings) -> None:
    await seed(settings, MANY_PRODUCTS, [])
    day = f"{MONTH}-10T10:00:00Z"
    sales = [{"product_id": p["id"], "store_id": 1, "quantity": 1, "sold_at": day} for p in MANY_PRODUCTS]
    assert (await client.post("/sales", json=sales)).status_code == 201
    packed, plain = await both(client, "/products")
    assert_same_content(packed, plain)
    assert len(packed.json()) > len(MANY_PRODUCTS)
    packed, plain = await both(client, f"/reports/top-products?month={MONTH}&limit=60&format=csv")
    assert_same_content(packed, plain)
    assert packed.headers["content-disposition"] == plain.headers["content-disposition"]
    # A short answer is sent as it is, whoever asks.
    small, _ = await both(client, "/stores")
    assert "content-encoding" not in small.headers and "vary" not in small.headers


@SQLITE
async def test_a_new_catalog_is_compressed_anew(client: httpx.AsyncClient, settings: config.Settings) -> None:
    await seed(settings, MANY_PRODUCTS, [])
    before = await client.get("/products", headers=GZIP)
    assert before.headers["content-encoding"] == "gzip"
    await seed(settings, [{**MANY_PRODUCTS[0], "name": "A new name"}], [])

    async def renamed() -> httpx.Response | None:
        after = await client.get("/products", headers=GZIP)
        return after if any(p["name"] == "A new name" for p in after.json()) else None

    after = await eventually(renamed, what="the new name in the compressed list")
    assert after.headers["content-encoding"] == "gzip"
    assert len(after.json()) == len(before.json())


@SQLITE
async def test_static_files(client: httpx.AsyncClient) -> None:
    for url in URLS.values():
        packed, plain = await both(client, url)
        assert_same_content(packed, plain)
        assert packed.headers["cache-control"] == "public, max-age=31536000, immutable"
