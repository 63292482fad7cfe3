"""The dashboard's pages: the month of the chain (``/``) and one store (sign-in and sign-out: ``signin``).

Pages are HTML rendered on the server (tables and bar charts as SVG), so they
work without JavaScript; ``static/app.js`` adds live updates (it polls the
page's ``?fragment=1``, the same HTML without the frame) and the month switch
without reload. Who may see them: the same rule as the API (open to loopback
until the first key exists); then an owner signed in with a session cookie.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import random
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from typing import Any
from urllib.parse import urlencode

import jinja2
from markupsafe import Markup
from starlette.requests import Request
from starlette.responses import Response

from .. import headers, metrics
from ..auth import Key
from ..compression import Encoded
from ..db.replica import Source
from ..problems import database_errors
from ..schemas import MonthRevenue, TopProduct, parse_id, parse_month
from ..service import behind, cached, encode_headers, freshness_headers, read, respond, service
from ..zones import zone
from . import i18n, views
from .assets import URLS
from .sessions import COOKIE, session_key_id

_templates = jinja2.Environment(
    loader=jinja2.PackageLoader("salesreport.web", "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)
_templates.globals["static"] = URLS

# No inline script or style anywhere: the charts are SVG drawn with attributes, the script is a file.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cache-Control": "no-store",
}
_SECURITY = encode_headers(SECURITY_HEADERS)
_HTML = encode_headers({"Content-Type": "text/html; charset=utf-8"})


def render(request: Request, template: str, status: int = 200, **context: Any) -> Response:
    texts = _texts(request)
    body = _templates.get_template(template).render(t=texts, lang=texts.lang, **context)
    return _remember_language(request, respond(body.encode(), status, _HTML, _SECURITY))


def _texts(request: Request) -> i18n.Texts:
    return i18n.Texts(i18n.choose(request), service(request).settings.currency)


async def session_key(request: Request) -> Key | None:
    """The owner key a live session cookie names, if any."""
    svc = service(request)
    token = request.cookies.get(COOKIE)
    if token is None:
        return None
    # A session opened a moment ago is read at once (the redirect after sign-in): from the primary.
    key_id, _ = await read(request, lambda conn: session_key_id(conn, token, svc.clock()), own_writes=True)
    if key_id is not None and key_id not in svc.keys.ids:
        # A key created a moment ago, signed in with on another worker: not in this copy yet.
        with database_errors("cannot load API keys"):
            await svc.keys.refresh(recheck=True)
    key = svc.keys.active(key_id) if key_id is not None else None
    return key if key is not None and key.role == "owner" else None


async def _viewer(request: Request) -> Response | None:
    """None if the caller may see the pages; otherwise the page to show instead (sign-in, 401)."""
    from ..api.access import _local  # one rule for the open mode, the API's

    keys = service(request).keys
    with database_errors("cannot load API keys"):
        await keys.refresh()
    if not keys.protected:
        if _local(request):
            return None
        metrics.key_rejected("not_local")
        return render(request, "signin.html", 401, error=None, open_mode=True, next=_next(request))
    owner = await session_key(request)
    if owner is not None:
        request.scope["salesreport.key_id"] = owner.id  # the access log names who looked
        return None
    return render(request, "signin.html", 401, error=None, open_mode=False, next=_next(request))


def _next(request: Request) -> str:
    query = {k: v for k, v in request.query_params.items() if k != "fragment"}
    return request.url.path + (f"?{urlencode(query)}" if query else "")


def _month(request: Request) -> int | None:
    """The page's month: ``?month=``, or the current month in the chain's zone; None if it is malformed."""
    svc = service(request)
    raw = request.query_params.get("month")
    if raw:
        try:
            return parse_month(raw)
        except ValueError:
            return None
    now = svc.clock().astimezone(zone(svc.settings.default_timezone))
    return now.year * 100 + now.month


def _bad_month(request: Request) -> Response:
    return render(request, "problem.html", 400, code=400, message=_texts(request)("bad_month"))


async def dashboard(request: Request) -> Response:
    refused = await _viewer(request)
    if refused is not None:
        return refused
    month = _month(request)
    if month is None:
        return _bad_month(request)
    texts = _texts(request)
    svc = service(request)

    async def build() -> tuple[tuple[str, dict[str, Any]], Source]:
        view, source = await read(request, lambda conn: views.month_view(conn, month), snapshot=True)
        context = {
            "freshness": _freshness(request, texts, source),
            "t": texts,
            "lang": texts.lang,
            "view": view,
            "month": view.month,
            "signed_in": bool(svc.keys.protected),
            "store_bars": views.bars(
                [str(i) for i in range(1, len(view.stores) + 1)], [s.revenue for s in view.stores]
            ),
            **_charts(texts, view.products, view.series),
            "form_action": "/",
            "fragment_url": f"/?{urlencode({'month': view.month, 'fragment': '1', 'lang': texts.lang})}",
            "title": f"{texts('title')} · {texts.month(view.month)}",
        }
        return (_templates.get_template("_month.html").render(**context), context), source

    return await _serve(request, ("month", month, texts.lang), build)


async def store_page(request: Request) -> Response:
    refused = await _viewer(request)
    if refused is not None:
        return refused
    raw = request.path_params["id"]
    svc = service(request)
    with database_errors("cannot load the catalog"):
        await svc.catalog.refresh()
    store_id = parse_id(raw)
    store = svc.catalog.store(store_id) if store_id is not None else None
    if store is None:
        return render(request, "problem.html", 404, code=404, message=_texts(request)("no_store"))
    month = _month(request)
    if month is None:
        return _bad_month(request)
    texts = _texts(request)
    lang = texts.lang

    async def build() -> tuple[tuple[str, dict[str, Any]], Source]:
        view, source = await read(request, lambda conn: views.store_view(conn, store.id, month), snapshot=True)
        context = {
            "freshness": _freshness(request, texts, source),
            "t": texts,
            "lang": texts.lang,
            "view": view,
            "store": store,
            "month": view.month,
            "signed_in": bool(svc.keys.protected),
            **_charts(texts, view.products, view.series),
            "form_action": f"/stores/{store.id}",
            "fragment_url": f"/stores/{store.id}?{urlencode({'month': view.month, 'fragment': '1', 'lang': lang})}",
            "title": f"{store.address} · {texts.month(view.month)}",
        }
        return (_templates.get_template("_store.html").render(**context), context), source

    return await _serve(request, ("store", store.id, month, texts.lang), build)


async def _serve(
    request: Request, key: tuple[Any, ...], build: Callable[[], Awaitable[tuple[tuple[str, dict[str, Any]], Source]]]
) -> Response:
    """A page from the cache (or built): the whole page, or for the live poll (``?fragment=1``) its
    main part alone, revalidated by ETag so that an unchanged page costs a 304 without a body."""

    async def page() -> tuple[_Page, Source]:
        (fragment, context), source = await build()
        return _Page(fragment, context), source

    svc = service(request)
    changes = svc.catalog.changes
    # Signed in or open: the page's frame says which (a sign-out button), and the first key changes it.
    full = (*key, svc.keys.protected)
    news = changes.news()
    built, source = await cached(request, svc.pages, full, page)
    if request.query_params.get("fragment") == "1":
        known = _known_tags(request)
        if known and not built.matches(known) and await behind(request, svc.pages, full) is not None:
            # The browser has a newer page (from another worker, or read before a change this one
            # keeps for its settle second): never answer it with an older one.
            built, source = await cached(request, svc.pages, full, page, settled=False)
        if built.matches(known) and request.query_params.get("wait") == "1":
            # The live poll: held until the page changes (or LIVE_WAIT_S), so that an open page costs
            # nothing while nothing changes; a browser that goes away (a tab closed) ends it at once.
            loop = asyncio.get_running_loop()
            deadline = loop.time() + LIVE_WAIT_S
            with metrics.poll_held(), _watched(request) as gone:
                while built.matches(known) and not svc.draining and loop.time() < deadline:
                    # A change came before this poll did, while the page is kept for its settle second:
                    # look again when that second is over rather than wait for the next change.
                    later = await behind(request, svc.pages, full)
                    await _first(news.wait(), gone, deadline if later is None else min(deadline, loop.time() + later))
                    if gone.done() or svc.draining or loop.time() >= deadline:
                        break
                    refused = await _viewer(request)  # a revoked key, a closed session: at once
                    if refused is not None:
                        return refused
                    if later is None:
                        # Changes that come together are shown together (and the page is rendered once);
                        # the polls that one change woke are answered over the second half of the
                        # gathering, not in one burst in front of every other request.
                        gather = random.uniform(LIVE_GATHER_S / 2, LIVE_GATHER_S)
                        await _first(None, gone, min(loop.time() + gather, deadline))
                        if gone.done():
                            break
                        refused = await _viewer(request)
                        if refused is not None:
                            return refused
                    news = changes.news()
                    built, source = await cached(request, svc.pages, full, page)
        fresh = encode_headers(freshness_headers(svc, source))
        # no-store: a poll is never written to the browser's cache (the script sends If-None-Match itself).
        if built.matches(known):
            return respond(b"", 304, _SECURITY, fresh, built.etag, built.fragment.vary)
        body, coding = await built.fragment.choose(request)
        return respond(body, 200, _HTML, _SECURITY, fresh, built.etag, coding)
    fresh = encode_headers(freshness_headers(svc, source))
    body, coding = await built.whole().choose(request)
    return _remember_language(request, respond(body, 200, _HTML, _SECURITY, fresh, coding))


def _known_tags(request: Request) -> frozenset[str]:
    """The tags of the request's ``If-None-Match``, compared weakly (RFC 9110: ``W/"x"`` names ``"x"``)."""
    value = headers.joined(request.scope, b"if-none-match")
    return frozenset(tag.strip().removeprefix("W/") for tag in value.split(",") if tag.strip())


@contextlib.contextmanager
def _watched(request: Request) -> Iterator[asyncio.Future[None]]:
    """A task that ends once the client of ``request`` has gone away (``_gone``), cancelled on the way out."""
    gone = asyncio.ensure_future(_gone(request))
    try:
        yield gone
    finally:
        gone.cancel()


async def _gone(request: Request) -> None:
    """Returns once the client of ``request`` has gone away. A GET's body is empty: a poll that sends
    one anyway, or a server that answers otherwise, is not watched (it ends at its deadline)."""
    with contextlib.suppress(Exception):
        message = await request.receive()
        if message["type"] == "http.request" and not message.get("body") and not message.get("more_body", False):
            message = await request.receive()
        if message["type"] == "http.disconnect":
            return
    await asyncio.Future()


async def _first(event: Coroutine[Any, Any, Any] | None, gone: asyncio.Future[None], until: float) -> None:
    """Wait for ``event`` (if any) or for ``gone``, until the event loop's clock reads ``until``."""
    loop = asyncio.get_running_loop()
    waiting = asyncio.ensure_future(event) if event is not None else None
    try:
        await asyncio.wait(
            [gone] if waiting is None else [waiting, gone],
            timeout=max(0.0, until - loop.time()),
            return_when=asyncio.FIRST_COMPLETED,
        )
    finally:
        if waiting is not None:
            waiting.cancel()


class _Page:
    """A page as kept in the cache: its main part (what the live poll fetches), named by its ETag, and
    the whole page around it, rendered the first time one is asked for and then kept with it; each
    also gzip-compressed once a client asks for that (``compression``).

    The ETag is weak (``W/"..."``): the plain and the compressed fragment carry the same one, as two
    encodings of the same content, and a poll's ``If-None-Match`` is compared weakly (RFC 9110).
    """

    def __init__(self, fragment: str, context: dict[str, Any]) -> None:
        self.fragment = Encoded(fragment.encode())
        self.context = context
        self.opaque = '"' + hashlib.blake2b(self.fragment.plain, digest_size=12).hexdigest() + '"'
        self.tag = "W/" + self.opaque
        self.etag = encode_headers({"ETag": self.tag})
        self._whole: Encoded | None = None

    def matches(self, known: frozenset[str]) -> bool:
        """Whether the tags of ``If-None-Match`` (see ``_known_tags``) name this page."""
        return self.opaque in known

    def whole(self) -> Encoded:
        if self._whole is None:
            html = _templates.get_template("page.html").render(
                **self.context, fragment=Markup(self.fragment.plain.decode()), etag=self.tag
            )
            self._whole = Encoded(html.encode())
        return self._whole


# How long a live poll is held while its page is unchanged (less than the proxies' timeouts: HAProxy's
# ``timeout server`` is 30 s), and how long after a change it waits for more before answering (half
# of it to all of it, at random).
LIVE_WAIT_S = 20.0
LIVE_GATHER_S = 3.0

# Figures this far behind or more say so on the page (a page that said so always would change every
# second, and its live poll would never be answered 304).
SHOW_LAG_S = 1.0


def _freshness(request: Request, texts: i18n.Texts, source: Source) -> str | None:
    """The page's line on how fresh its figures are (None while they are current)."""
    svc = service(request)
    lag = svc.reads.lag(source)
    if source.replica and source.as_of is None:
        line: str | None = texts("as_of_unknown")
    elif source.as_of is not None and lag is not None and lag >= SHOW_LAG_S:
        when = texts.time(source.as_of, zone(svc.settings.default_timezone))
        line = texts("as_of", time=when, lag=texts.duration(lag))
    else:
        line = None
    return line


def _charts(texts: i18n.Texts, products: list[TopProduct], series: list[MonthRevenue]) -> dict[str, Any]:
    """The bars of the products' chart and of the months' chart, for the templates."""
    return {
        "product_bars": views.bars([str(i) for i in range(1, len(products) + 1)], [str(p.quantity) for p in products]),
        "month_bars": views.bars([texts.month_short(m.month) for m in series], [m.revenue for m in series]),
    }


def _remember_language(request: Request, response: Response) -> Response:
    """The page's language switch (``?lang=``) is remembered in a cookie."""
    if request.query_params.get("lang") in i18n.LANGUAGES:
        lang = request.query_params["lang"]
        response.set_cookie(i18n.COOKIE, lang, max_age=365 * 86400, samesite="strict", httponly=True)
    return response
