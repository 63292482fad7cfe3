"""Signing in and out of the dashboard: ``POST /signin`` opens a session for an owner key (its cookie),
``POST /signout`` closes it; both only from this site's own forms."""

from __future__ import annotations

from urllib.parse import parse_qs

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from .. import metrics
from ..auth import Unauthenticated
from ..problems import ProblemError, database_errors
from ..service import receive_body, service
from . import i18n
from .pages import SECURITY_HEADERS, render
from .sessions import COOKIE, LIFETIME, close_session, open_session

MAX_FORM = 4096


def _same_origin(request: Request) -> bool:
    """A form posted from this site (a browser sends Origin with every POST): the public origin if one
    is set (``SALESREPORT_PUBLIC_URL``), else the host the request was sent to."""
    origin = request.headers.get("origin")
    if origin is None:
        return True  # not a browser: a cross-site form always carries Origin
    public = service(request).settings.public_origin
    if public is not None:
        return origin.lower() == public
    scheme, _, host = origin.partition("://")
    return scheme in ("http", "https") and host == request.headers.get("host", "")


def _secure(request: Request) -> bool:
    """Whether the browser reached us over TLS (directly, or through the public origin's proxy)."""
    public = service(request).settings.public_origin
    return request.url.scheme == "https" or (public is not None and public.startswith("https:"))


async def sign_in_again(request: Request) -> Response:
    """``GET /signin``: where a failed sign-in left the browser (its language links, a reload): the form
    is on the page itself."""
    lang = request.query_params.get("lang")
    return RedirectResponse("/" + (f"?lang={lang}" if lang in i18n.LANGUAGES else ""), 303, headers=SECURITY_HEADERS)


async def sign_in(request: Request) -> Response:
    if not _same_origin(request):
        raise ProblemError(403, "Forbidden", "sign in from this site's own form")
    form = parse_qs((await _form_body(request)).decode("utf-8", "replace"))
    token = (form.get("key") or [""])[0].strip()
    target = (form.get("next") or ["/"])[0]
    if not target.startswith("/") or target.startswith("//") or "\\" in target:
        target = "/"
    svc = service(request)
    with database_errors("cannot load API keys"):
        # The keys as they are now, not as this worker's copy had them up to ``changes.BOUND`` ago: a key
        # created a moment ago signs in, one revoked a moment ago does not.
        await svc.keys.refresh(recheck=svc.keys.has_key_form(token))
    try:
        key = svc.keys.authenticate(f"Bearer {token}")
    except Unauthenticated:
        return render(request, "signin.html", 401, error="bad_key", open_mode=False, next=target)
    if key is None:  # open mode: nothing to sign in to
        return RedirectResponse(target, status_code=303)
    if key.role != "owner":
        metrics.key_rejected("forbidden")
        return render(request, "signin.html", 403, error=f"{key.role}_refused", open_mode=False, next=target)
    with database_errors("cannot open a session"):
        async with svc.db.control.begin() as conn:
            token = await open_session(conn, key.id, svc.clock())
    response = RedirectResponse(target, status_code=303, headers=SECURITY_HEADERS)
    response.set_cookie(
        COOKIE,
        token,
        max_age=int(LIFETIME.total_seconds()),
        httponly=True,
        samesite="strict",
        secure=_secure(request),
        path="/",
    )
    return response


async def _form_body(request: Request) -> bytes:
    """The sign-in form's body: small, urlencoded, and sent within the body timeout (no key is needed to
    send it, so it must cost a stranger nothing to be refused)."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind != "application/x-www-form-urlencoded":
        raise ProblemError(415, "Unsupported Media Type", "send the sign-in form as a form")
    too_large = ProblemError(413, "Content Too Large", "the form is too large")
    return await receive_body(request, MAX_FORM, lambda: too_large, "form")


async def sign_out(request: Request) -> Response:
    if not _same_origin(request):
        raise ProblemError(403, "Forbidden", "sign out from this site's own form")
    svc = service(request)
    with database_errors("cannot close the session"):
        async with svc.db.control.begin() as conn:
            await close_session(conn, request.cookies.get(COOKIE))
    response = RedirectResponse("/", status_code=303, headers=SECURITY_HEADERS)
    response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict", secure=_secure(request))
    return response
