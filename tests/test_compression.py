"""Bodies sent gzip-compressed to the clients that accept it: the pages, the reports, the catalog, the
static files; each the same content as its plain form, compressed once, and never for a client that
refused gzip."""

from __future__ import annotations

import gzip
import zlib

import httpx
import pytest
from starlette.requests import Request

from salesreport import compression, config
from salesreport.compression import Encoded
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
        ("gzip;q=0, gzip", True),
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


async def test_a_large_body_is_compressed_in_a_thread_to_the_same_bytes() -> None:
    asks = Request({"type": "http", "headers": [(b"accept-encoding", b"gzip")]})
    plain = b"".join(b"%d," % i for i in range(compression.THREAD_SIZE // 4))
    assert len(plain) >= compression.THREAD_SIZE
    sent, _ = await Encoded(plain).choose(asks)
    assert gzip.decompress(sent) == plain


async def test_a_body_gzip_cannot_shrink_is_sent_plain() -> None:
    asks = Request({"type": "http", "headers": [(b"accept-encoding", b"gzip")]})
    noise = Encoded(zlib.compress(bytes(range(256)) * 64, 9) + bytes((i * 7919) % 251 for i in range(4000)))
    packed = gzip.compress(noise.plain, compression.LEVEL, mtime=0)
    sent, headers = await noise.choose(asks)
    if len(packed) >= len(noise.plain):
        assert sent is noise.plain and headers == compression.PLAIN
    else:  # the noise was not noisy enough: at least the bytes must be right
        assert gzip.decompress(sent) == noise.plain


async def both(client: httpx.AsyncClient, path: str) -> tuple[httpx.Response, httpx.Response]:
    """``path`` asked for by a client that accepts gzip and by one that refuses it."""
    packed = await client.get(path, headers=GZIP)
    plain = await client.get(path, headers=PLAIN)
    assert packed.status_code == plain.status_code == 200, (packed.text, plain.text)
    return packed, plain


def assert_same_content(packed: httpx.Response, plain: httpx.Response) -> None:
    assert packed.headers["content-encoding"] == "gzip"
    assert "content-encoding" not in plain.headers
    vary = packed.headers["vary"]
    assert vary == plain.headers["vary"] and "accept-encoding" in vary.lower().replace(" ", "").split(",")
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
    other = await client.get(f"/?month={MONTH}&fragment=1", headers={**GZIP, "if-none-match": 'W/"other"'})
    assert other.status_code == 200


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
