"""The dashboard's routes: the month of the chain (``/``), one store, sign-in and sign-out, static files.

Pages are HTML rendered on the server (tables and bar charts as SVG), so they
work without JavaScript; ``static/app.js`` adds live updates (it polls the
page's ``?fragment=1``, the same HTML without the frame) and the month switch
without reload. Who may see them: the same rule as the API (open to loopback
until the first key exists); then an owner signed in with a session cookie.
"""

from __future__ import annotations

import hashlib
from typing import Any
from urllib.parse import parse_qs, urlencode

import jinja2
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from .. import db
from ..auth import Key, Unauthenticated
from ..problems import ProblemError, database_errors
from ..schemas import MAX_ID, parse_month
from ..service import Service, service
from ..zones import zone
from . import i18n, views
from .assets import URLS
from .sessions import COOKIE, LIFETIME, Sessions

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
MAX_FORM = 4096


def _html(request: Request, template: str, status: int = 200, **context: Any) -> Response:
    texts = _texts(request)
    body = _templates.get_template(template).render(t=texts, lang=texts.lang, **context)
    response = Response(body, status_code=status, media_type="text/html; charset=utf-8", headers=SECURITY_HEADERS)
    if request.query_params.get("lang") in i18n.LANGUAGES:
        response.set_cookie(i18n.COOKIE, texts.lang, max_age=365 * 86400, samesite="strict", httponly=True)
    return response


def _texts(request: Request) -> i18n.Texts:
    return i18n.Texts(i18n.choose(request), service(request).settings.currency)


async def sessions(svc: Service) -> Sessions:
    """The session signer, read on first use if start-up could not (the schema was migrated since)."""
    if svc.sessions is None:
        with database_errors("cannot read the session secret"):
            svc.sessions = await load_sessions(svc.db, svc.clock)
    return svc.sessions


async def session_key(request: Request) -> Key | None:
    """The owner key a valid session cookie names, if any."""
    svc = service(request)
    cookie = request.cookies.get(COOKIE)
    if cookie is None or svc.sessions is None:
        return None
    key_id = svc.sessions.key_id(cookie)
    key = svc.keys.active(key_id) if key_id is not None else None
    return key if key is not None and key.role == "owner" else None


async def _viewer(request: Request) -> Response | None:
    """None if the caller may see the pages; otherwise the page to show instead (sign-in, 401)."""
    from ..api import _local  # one rule for the open mode, the API's

    keys = service(request).keys
    with database_errors("cannot load API keys"):
        await keys.refresh()
    if not keys.protected:
        if _local(request):
            return None
        return _html(request, "signin.html", 401, error=None, open_mode=True, next=_next(request))
    if await session_key(request) is not None:
        return None
    return _html(request, "signin.html", 401, error=None, open_mode=False, next=_next(request))


def _next(request: Request) -> str:
    query = {k: v for k, v in request.query_params.items() if k != "fragment"}
    return request.url.path + (f"?{urlencode(query)}" if query else "")


def _month(request: Request) -> int:
    svc = service(request)
    raw = request.query_params.get("month")
    if raw:
        try:
            return parse_month(raw)
        except ValueError:
            pass  # a bad month in a shared link: show the current one
    now = svc.clock().astimezone(zone(svc.settings.default_timezone))
    return now.year * 100 + now.month


async def dashboard(request: Request) -> Response:
    refused = await _viewer(request)
    if refused is not None:
        return refused
    month = _month(request)
    texts = _texts(request)
    fragment = request.query_params.get("fragment") == "1"
    svc = service(request)
    key = ("month", month, texts.lang, fragment)
    html = svc.pages.get(key)
    if html is None:
        with database_errors("read failed"):
            async with svc.db.reader.connect() as conn:
                view = await views.month_view(conn, month)
        html = _render_month(request, view, fragment)
        svc.pages.put(key, html)
    return _page(request, html)


def _render_month(request: Request, view: views.MonthView, fragment: bool) -> str:
    texts = _texts(request)
    context = {
        "t": texts,
        "lang": texts.lang,
        "view": view,
        "month": view.month,
        "signed_in": bool(service(request).keys.protected),
        "store_bars": views.bars([str(i) for i in range(1, len(view.stores) + 1)], [s.revenue for s in view.stores]),
        "product_bars": views.bars(
            [str(i) for i in range(1, len(view.products) + 1)], [str(p.quantity) for p in view.products]
        ),
        "month_bars": views.bars([texts.month_short(m.month) for m in view.series], [m.revenue for m in view.series]),
        "fragment_url": f"/?{urlencode({'month': view.month, 'fragment': '1'})}",
    }
    template = "_month.html" if fragment else "month.html"
    return _templates.get_template(template).render(**context)


async def store_page(request: Request) -> Response:
    refused = await _viewer(request)
    if refused is not None:
        return refused
    raw = request.path_params["id"]
    svc = service(request)
    with database_errors("cannot load the catalog"):
        await svc.catalog.refresh()
    store_id = int(raw) if raw.isascii() and raw.isdigit() and 1 <= int(raw) <= MAX_ID else None
    store = svc.catalog.store(store_id) if store_id is not None else None
    if store is None:
        return _html(request, "missing.html", 404)
    month = _month(request)
    texts = _texts(request)
    fragment = request.query_params.get("fragment") == "1"
    key = ("store", store.id, month, texts.lang, fragment)
    html = svc.pages.get(key)
    if html is None:
        with database_errors("read failed"):
            async with svc.db.reader.connect() as conn:
                view = await views.store_view(conn, store.id, month)
        context = {
            "t": texts,
            "lang": texts.lang,
            "view": view,
            "store": store,
            "month": view.month,
            "signed_in": bool(svc.keys.protected),
            "product_bars": views.bars(
                [str(i) for i in range(1, len(view.products) + 1)], [str(p.quantity) for p in view.products]
            ),
            "month_bars": views.bars(
                [texts.month_short(m.month) for m in view.series], [m.revenue for m in view.series]
            ),
            "fragment_url": f"/stores/{store.id}?{urlencode({'month': view.month, 'fragment': '1'})}",
        }
        html = _templates.get_template("_store.html" if fragment else "store.html").render(**context)
        svc.pages.put(key, html)
    return _page(request, html)


def _page(request: Request, html: str) -> Response:
    if request.query_params.get("fragment") == "1":
        # The live poll: revalidated by ETag, so an unchanged page costs a 304 and no body. The
        # browser keeps it for this user only (private), and must ask again every time (no-cache).
        tag = '"' + hashlib.blake2b(html.encode(), digest_size=12).hexdigest() + '"'
        headers = {**SECURITY_HEADERS, "Cache-Control": "private, no-cache", "ETag": tag, "Vary": "Cookie"}
        if request.headers.get("if-none-match") == tag:
            return Response(status_code=304, headers=headers)
        return Response(html, media_type="text/html; charset=utf-8", headers=headers)
    response = Response(html, media_type="text/html; charset=utf-8", headers=SECURITY_HEADERS)
    if request.query_params.get("lang") in i18n.LANGUAGES:
        lang = request.query_params["lang"]
        response.set_cookie(i18n.COOKIE, lang, max_age=365 * 86400, samesite="strict", httponly=True)
    return response


def _same_origin(request: Request) -> bool:
    """A form posted from this site (a browser sends Origin with every POST)."""
    origin = request.headers.get("origin")
    if origin is None:
        return True  # not a browser: a cross-site form always carries Origin
    host = request.headers.get("host", "")
    return origin.split("://", 1)[-1] == host


async def sign_in(request: Request) -> Response:
    if not _same_origin(request):
        raise ProblemError(403, "Forbidden", "sign in from this site's own form")
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM:
            raise ProblemError(413, "Content Too Large", "the form is too large")
    form = parse_qs(body.decode("utf-8", "replace"))
    token = (form.get("key") or [""])[0].strip()
    target = (form.get("next") or ["/"])[0]
    if not target.startswith("/") or target.startswith("//") or "\\" in target:
        target = "/"
    svc = service(request)
    with database_errors("cannot load API keys"):
        await svc.keys.refresh()
    try:
        key = svc.keys.authenticate(f"Bearer {token}")
    except Unauthenticated:
        return _html(request, "signin.html", 401, error="bad_key", open_mode=False, next=target)
    if key is None:  # open mode: nothing to sign in to
        return RedirectResponse(target, status_code=303)
    if key.role != "owner":
        return _html(request, "signin.html", 403, error="pos_refused", open_mode=False, next=target)
    response = RedirectResponse(target, status_code=303, headers=SECURITY_HEADERS)
    response.set_cookie(
        COOKIE,
        (await sessions(svc)).cookie(key.id),
        max_age=int(LIFETIME.total_seconds()),
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
        path="/",
    )
    return response


async def sign_out(request: Request) -> Response:
    if not _same_origin(request):
        raise ProblemError(403, "Forbidden", "sign out from this site's own form")
    response = RedirectResponse("/", status_code=303, headers=SECURITY_HEADERS)
    response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict", secure=request.url.scheme == "https")
    return response


async def load_sessions(database: db.Database, clock: Any) -> Sessions:
    """The session signer, with the secret ``migrate`` made (made here if it is missing: every worker
    then reads the one that was stored first)."""
    import secrets as random

    import sqlalchemy as sa

    async with database.control.begin() as conn:
        insert = db.upsert(conn, db.secrets).values(name="session", value=random.token_hex(32))
        await conn.execute(insert.on_conflict_do_nothing(index_elements=["name"]))
        secret = await conn.scalar(sa.select(db.secrets.c.value).where(db.secrets.c.name == "session"))
    return Sessions(str(secret), clock)
