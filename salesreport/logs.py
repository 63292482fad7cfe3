"""The logs: structured lines on stdout, JSON in production, readable in a terminal; and the access log.

Every request's access line (``Front``) is the hot one: in JSON it is rendered
by msgspec directly, and the lines of one event-loop turn are written together
in one call (``AccessLog``), after that turn; none is dropped, and the last are
written when the worker stops (``flush``).
"""

from __future__ import annotations

import asyncio
import sys
from datetime import UTC, datetime
from typing import Any

import msgspec
import structlog

log = structlog.get_logger("salesreport.api")
# What a pipe writes whole (POSIX: at least 512; 4096 on Linux).
PIPE_BUF = 4096


def configure_logging(log_format: str) -> None:
    """Structured logs on stdout: JSON lines in production, readable in a terminal."""
    access.flush()
    access.json = log_format == "json"
    import logging

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
    # Alembic names each of its plugins as it loads them, whenever a worker reads the schema's revision.
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)


class _Lines:
    """Writes each line in one call (workers share stdout) to the stdout of the moment."""

    def __init__(self, *_args: Any) -> None:
        pass

    def msg(self, message: str) -> None:
        sys.stdout.write(message + "\n")
        sys.stdout.flush()

    log = debug = info = warn = warning = error = err = critical = exception = fatal = failure = msg


class AccessLog:
    """One line per request, written once per event-loop turn (see above)."""

    def __init__(self) -> None:
        self.json = False
        self._pending: list[bytes] = []
        self._scheduled = False
        self._encode = msgspec.json.Encoder().encode

    def line(self, **fields: Any) -> None:
        if not self.json:
            log.info("request", **fields)
            return
        # msgspec writes an instant in UTC as structlog's lines have it ("...T19:31:42.855716Z").
        fields.update(event="request", level="info", timestamp=datetime.now(UTC))
        self._pending.append(self._encode(fields) + b"\n")
        if not self._scheduled:
            try:
                asyncio.get_running_loop().call_soon(self.flush)
            except RuntimeError:  # no loop: now
                self.flush()
                return
            self._scheduled = True

    def flush(self) -> None:
        """Write the lines still pending: whole lines, in writes of at most ``PIPE_BUF`` bytes, which a
        pipe keeps whole (the workers of a server share stdout) unless a line alone is longer."""
        self._scheduled = False
        if not self._pending:
            return
        lines, self._pending = self._pending, []
        out = sys.stdout.buffer
        chunk: list[bytes] = []
        size = 0
        for line in lines:
            if chunk and size + len(line) > PIPE_BUF:
                out.write(b"".join(chunk))
                out.flush()
                chunk, size = [], 0
            chunk.append(line)
            size += len(line)
        out.write(b"".join(chunk))
        out.flush()


access = AccessLog()
