"""Who may call a route: the caller's key, the open mode's loopback rule, the owners' routes."""

from __future__ import annotations

from starlette.requests import Request

from .. import headers, metrics
from ..auth import Key, Unauthenticated, is_loopback, names_loopback
from ..problems import ProblemError, database_errors, forbidden
from ..service import service
from ..web.pages import session_key
from ..web.sessions import COOKIE

# The roles of the API's keys; a metrics key reads /metrics only.
API_ROLES = ("owner", "pos")


async def authenticate(request: Request, roles: tuple[str, ...] = API_ROLES) -> Key | None:
    """The caller's key (None while no key exists); 401 without a valid one, 403 if its role is not in ``roles``."""
    keys = service(request).keys
    if keys.stale():
        with database_errors("cannot load API keys"):
            await keys.refresh()
    if not keys.protected and not _local(request):
        metrics.key_rejected("not_local")
        raise ProblemError(
            401,
            "Unauthorized",
            "no API key exists yet, so this service answers loopback clients only; "
            "create keys (python -m salesreport keys create --role owner) and send one",
            headers={"WWW-Authenticate": 'Bearer realm="salesreport"'},
        )
    authorization, cookie = headers.first(request.scope, b"authorization", b"cookie")
    if authorization is None and cookie is not None and request.method == "GET" and COOKIE in request.cookies:
        # A report read from the dashboard (its CSV links): the signed-in owner's session.
        owner = await session_key(request)
        if owner is not None:
            request.scope["salesreport.key_id"] = owner.id
            return owner
    try:
        key = keys.authenticate(authorization)
    except Unauthenticated as exc:
        raise ProblemError(
            401, "Unauthorized", str(exc), headers={"WWW-Authenticate": 'Bearer realm="salesreport"'}
        ) from None
    if key is not None:
        request.scope["salesreport.key_id"] = key.id
        if key.role not in roles:
            raise forbidden(f"this endpoint is for {' and '.join(roles)} keys only, not {key.role} keys")
    return key


# Headers that proxies add. A proxy on this machine that adds none of them
# (a bare TCP relay, an SSH tunnel) cannot be told from a local client: this
# check is a safety net, and the real safeguard is to create keys.
_PROXY_HEADERS = {b"forwarded", b"x-forwarded-for", b"x-forwarded-host", b"x-real-ip", b"via", b"x-client-ip"}


def _local(request: Request) -> bool:
    """Whether the request comes straight from this machine (not through a proxy), sent to a loopback
    name: a page that a browser here loaded from elsewhere and whose name was then pointed at 127.0.0.1
    (DNS rebinding) still sends its own name as Host."""
    host = None
    for name, value in request.scope["headers"]:
        if name in _PROXY_HEADERS:
            return False
        if name == b"host" and host is None:
            host = value.decode("latin-1")
    client = request.scope.get("client")
    return client is not None and is_loopback(client[0]) and names_loopback(host or "")


async def owner_only(request: Request) -> None:
    key = await authenticate(request)
    if key is not None and key.role != "owner":
        raise forbidden("reports are for owner keys only")
