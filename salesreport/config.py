"""Settings, read once from the environment."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError


def _int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise SystemExit(f"{name} must be an integer, got {raw!r}") from None


def async_url(url: str) -> str:
    """Map the user-facing URL to the async driver SQLAlchemy should use."""
    if url.startswith("sqlite:"):
        return "sqlite+aiosqlite:" + url[len("sqlite:") :]
    for prefix in ("postgresql:", "postgres:"):
        if url.startswith(prefix):
            return "postgresql+asyncpg:" + url[len(prefix) :]
    if url.startswith(("sqlite+aiosqlite:", "postgresql+asyncpg:")):
        return url
    raise SystemExit(f"DATABASE_URL must start with sqlite:/// or postgresql://, got {url!r}")


@dataclass(frozen=True, slots=True)
class Settings:
    database_url: str
    default_timezone: str
    # Group commit: a batch is written when this many sales are pending, or
    # after flush_ms once the first one arrived.
    batch_max_sales: int
    flush_ms: int
    # Sales waiting for the writer; beyond this a POST gets 503 + Retry-After.
    queue_max_sales: int
    pool_size: int
    log_format: str
    # Seconds a client has to send a request body.
    body_timeout: float
    # Seconds between SIGTERM and the server closing its connections, during
    # which new requests get 503 and every response closes its connection.
    drain_seconds: float

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")


def load() -> Settings:
    tz = os.environ.get("SALESREPORT_TIMEZONE") or "UTC"
    try:
        ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        raise SystemExit(f"SALESREPORT_TIMEZONE is not an IANA time zone: {tz!r}") from None
    return Settings(
        database_url=async_url(os.environ.get("DATABASE_URL") or "sqlite:///salesreport.db"),
        default_timezone=tz,
        batch_max_sales=_int("SALESREPORT_BATCH_MAX_SALES", 2000),
        flush_ms=_int("SALESREPORT_FLUSH_MS", 1),
        queue_max_sales=_int("SALESREPORT_QUEUE_MAX_SALES", 50_000),
        pool_size=_int("SALESREPORT_POOL_SIZE", 8),
        log_format=os.environ.get("SALESREPORT_LOG_FORMAT") or ("console" if os.isatty(2) else "json"),
        body_timeout=_int("SALESREPORT_BODY_TIMEOUT_S", 10),
        drain_seconds=_int("SALESREPORT_DRAIN_S", 1),
    )


def configure_logging(log_format: str) -> None:
    """Structured logs on stdout: JSON lines in production, readable in a terminal."""
    import logging

    import msgspec
    import structlog

    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    text_renderer: Any
    if log_format == "json":
        # msgspec renders a line several times faster than json.dumps.
        encode = msgspec.json.Encoder(enc_hook=repr).encode  # anything unusual is logged as its repr
        renderer: Any = structlog.processors.JSONRenderer(serializer=lambda event, **_: encode(event))
        factory: Any = structlog.BytesLoggerFactory()
        text_renderer = structlog.processors.JSONRenderer()
    else:
        renderer = text_renderer = structlog.dev.ConsoleRenderer(colors=False)
        factory = _Lines
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, renderer],
        logger_factory=factory,
        cache_logger_on_first_use=True,
    )
    # Libraries log through the standard library: render them the same way.
    handler = logging.StreamHandler()
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, text_renderer],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)


class _Lines:
    """Writes each line in one call (workers share stdout) to the stdout of the moment."""

    def __init__(self, *_args: Any) -> None:
        pass

    def msg(self, message: str) -> None:
        sys.stdout.write(message + "\n")
        sys.stdout.flush()

    log = debug = info = warn = warning = error = err = critical = exception = fatal = failure = msg
