"""Settings, read once from the environment."""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from .schemas import MAX_BATCH
from .zones import zone


def _number(name: str, default: float, kind: type[float] | type[int], low: float, high: float) -> Any:
    """The setting ``name`` as a number of ``kind`` in [low, high]; a clear exit otherwise."""
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = kind(raw)
    except ValueError:
        raise SystemExit(f"{name} must be {'an integer' if kind is int else 'a number'}, got {raw!r}") from None
    if not low <= value <= high:  # also refuses nan
        raise SystemExit(f"{name} must be between {low:g} and {high:g}, got {raw!r}")
    return value


def _int(name: str, default: int, low: int, high: int) -> int:
    value: int = _number(name, default, int, low, high)
    return value


def _float(name: str, default: float, low: float, high: float) -> float:
    value: float = _number(name, default, float, low, high)
    return value


def async_url(url: str, name: str = "DATABASE_URL") -> str:
    """Map the user-facing URL to the async driver SQLAlchemy should use; a PostgreSQL URL that the
    driver could not take (a port that is not a number, an option it does not know) stops with a
    message naming ``name``."""
    if url.startswith("sqlite:"):
        return _sqlite_url(name, "sqlite+aiosqlite:" + url[len("sqlite:") :], url)
    for prefix in ("postgresql:", "postgres:"):
        if url.startswith(prefix):
            return _postgres_url(name, "postgresql+asyncpg:" + url[len(prefix) :], url)
    if url.startswith("postgresql+asyncpg:"):
        return _postgres_url(name, url, url)
    if url.startswith("sqlite+aiosqlite:"):
        return _sqlite_url(name, url, url)
    raise SystemExit(f"{name} must start with sqlite:/// or postgresql://, got {url!r}")


def _sqlite_url(name: str, url: str, raw: str) -> str:
    """A SQLite URL that names a file: an in-memory database would be a new, empty one on each of the
    service's connections, and gone when a command ends."""
    from sqlalchemy.engine import make_url

    if (make_url(url).database or ":memory:") == ":memory:":
        raise SystemExit(
            f"{name} must name a SQLite file (sqlite:///salesreport.db, sqlite:////srv/sales.db), got {raw!r}"
        )
    return url


# What a PostgreSQL URL's query may hold besides what asyncpg.connect takes: SQLAlchemy's own option.
_SQLALCHEMY_OPTIONS = frozenset({"prepared_statement_cache_size"})


def _postgres_url(name: str, url: str, raw: str) -> str:
    import inspect

    import asyncpg
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)  # a port that is not a number is a ValueError here
        if parsed.port is not None and not 0 < parsed.port < 65536:
            raise ValueError(f"port {parsed.port} is not between 1 and 65535")
    except (ValueError, ArgumentError) as exc:
        raise SystemExit(f"{name} is not a database URL ({exc}): {hidden(raw)!r}") from None
    known = set(inspect.signature(asyncpg.connect).parameters) | _SQLALCHEMY_OPTIONS
    unknown = sorted(set(parsed.query) - known)
    if unknown:
        hint = " (TLS is ssl=require, verify-full, …: sslmode is libpq's spelling)" if "sslmode" in unknown else ""
        raise SystemExit(f"{name} has options the PostgreSQL driver does not know: {', '.join(unknown)}{hint}")
    return url


def hidden(url: str) -> str:
    """``url`` without its password, for a message."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url.split("@")[-1]


@dataclass(frozen=True, slots=True)
class Settings:
    database_url: str
    default_timezone: str
    # Group commit: a sale that finds the writer idle is written at once; what
    # arrives while a batch is written goes in the next one (up to
    # batch_max_sales). flush_ms > 0 makes each batch wait that long for company.
    batch_max_sales: int
    flush_ms: float
    # Sales waiting for the writer; beyond this a POST gets 503 + Retry-After.
    # At least one full array, or the largest arrays could never be taken.
    queue_max_sales: int
    # Seconds a POST waits for its batch to commit before it is answered 503.
    write_timeout: float
    # How long an idempotency key identifies one sale of its store.
    key_lifetime: timedelta
    pool_size: int
    log_format: str
    # Seconds a client has to send a request body.
    body_timeout: float
    # Seconds between SIGTERM and the server closing its connections, during
    # which new requests get 503 and every response closes its connection.
    drain_seconds: float
    # The chain's currency (ISO 4217), for the dashboard's money; the JSON API has plain decimals.
    currency: str = "RUB"
    # The origin that browsers use to reach the dashboard (``https://reports.example.com``), when it is
    # not what the service itself sees: behind a proxy that terminates TLS or rewrites Host.
    public_origin: str | None = None
    # A streaming replica for reports and the dashboard (PostgreSQL only; see ``db.replica``).
    database_read_url: str | None = None
    # Reads leave a replica further behind than this, for the primary (see ``db.replica``).
    max_lag: float = 5.0
    # Seconds between two measures of the replica's lag.
    lag_check: float = 1.0

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")


def load() -> Settings:
    tz = os.environ.get("SALESREPORT_TIMEZONE") or "UTC"
    try:
        zone(tz)
    except ValueError:
        raise SystemExit(f"SALESREPORT_TIMEZONE is not an IANA time zone: {tz!r}") from None
    settings = Settings(
        database_url=async_url(os.environ.get("DATABASE_URL") or "sqlite:///salesreport.db"),
        default_timezone=tz,
        batch_max_sales=_int("SALESREPORT_BATCH_MAX_SALES", 2000, 1, 100_000),
        flush_ms=_float("SALESREPORT_FLUSH_MS", 0, 0, 1000),
        queue_max_sales=_int("SALESREPORT_QUEUE_MAX_SALES", 50_000, MAX_BATCH, 10_000_000),
        write_timeout=_float("SALESREPORT_WRITE_TIMEOUT_S", 10, 0.1, 600),
        key_lifetime=timedelta(days=_float("SALESREPORT_KEY_LIFETIME_DAYS", 30, 1, 3650)),
        pool_size=_int("SALESREPORT_POOL_SIZE", 8, 1, 1000),
        log_format=_log_format(),
        body_timeout=_float("SALESREPORT_BODY_TIMEOUT_S", 10, 0.1, 3600),
        drain_seconds=_float("SALESREPORT_DRAIN_S", 1, 0, 3600),
        currency=_currency(),
        public_origin=_public_origin(),
        database_read_url=_read_url(),
        max_lag=_float("SALESREPORT_MAX_LAG_S", 5, 0, 86400),
        lag_check=_float("SALESREPORT_LAG_CHECK_S", 1, 0.01, 60),
    )
    if settings.database_read_url is not None and settings.is_sqlite:
        raise SystemExit("DATABASE_READ_URL (a streaming replica) needs a PostgreSQL DATABASE_URL")
    # A batch waits up to flush_ms for company: a deadline that short would
    # answer 503 to sales that are written a moment later.
    if settings.flush_ms / 1000 * 10 > settings.write_timeout:
        raise SystemExit(
            f"SALESREPORT_WRITE_TIMEOUT_S ({settings.write_timeout:g}) must be at least ten times "
            f"SALESREPORT_FLUSH_MS ({settings.flush_ms:g} ms)"
        )
    return settings


def _read_url() -> str | None:
    raw = os.environ.get("DATABASE_READ_URL")
    if not raw:
        return None
    url = async_url(raw, "DATABASE_READ_URL")
    if not url.startswith("postgresql"):
        raise SystemExit(f"DATABASE_READ_URL must start with postgresql://, got {raw!r}")
    return url


def _currency() -> str:
    from babel.numbers import get_currency_name

    code = (os.environ.get("SALESREPORT_CURRENCY") or "RUB").strip()
    # Babel knows the ISO 4217 codes: an unknown one comes back unchanged as its own name.
    if len(code) != 3 or not code.isascii() or not code.isupper() or get_currency_name(code, locale="en") == code:
        raise SystemExit(f"SALESREPORT_CURRENCY is not an ISO 4217 currency code: {code!r}")
    return code


def _public_origin() -> str | None:
    """``SALESREPORT_PUBLIC_URL`` as a browser writes it in ``Origin``: scheme, host, and a port other
    than the scheme's own."""
    from urllib.parse import urlsplit

    raw = (os.environ.get("SALESREPORT_PUBLIC_URL") or "").strip()
    if not raw:
        return None
    try:
        url = urlsplit(raw)
        port = url.port
    except ValueError:
        port, url = None, None
    extra = url is None or url.path not in ("", "/") or url.query or url.fragment or url.username or url.password
    if url is None or extra or url.scheme not in ("http", "https") or not url.hostname:
        raise SystemExit(f"SALESREPORT_PUBLIC_URL must be an origin such as https://reports.example.com, got {raw!r}")
    host = f"[{url.hostname}]" if ":" in url.hostname else url.hostname
    default = 443 if url.scheme == "https" else 80
    return f"{url.scheme}://{host}" + (f":{port}" if port not in (None, default) else "")


def _log_format() -> str:
    raw = os.environ.get("SALESREPORT_LOG_FORMAT") or ("console" if os.isatty(2) else "json")
    if raw not in ("json", "console"):
        raise SystemExit(f"SALESREPORT_LOG_FORMAT must be json or console, got {raw!r}")
    return raw
