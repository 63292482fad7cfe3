"""What every request of a worker shares: settings, database, catalog, writer, keys, clock."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from starlette.requests import Request

from . import config, db
from .auth import KeyRing
from .ingestion import Batcher, Catalog
from .web.views import Cache


@dataclass
class Service:
    settings: config.Settings
    db: db.Database
    catalog: Catalog
    batcher: Batcher
    # The writer of returns: a batcher of its own, beside the sales'.
    returns: Batcher
    keys: KeyRing
    # The Alembic revision this code expects the database at.
    head_revision: str
    # The wall clock, injectable: tests pin it to any instant (a month's last minute, a DST change).
    clock: Callable[[], datetime] = lambda: datetime.now(UTC)
    draining: bool = False
    # The dashboard's rendered pages, for a second.
    pages: Cache = field(default_factory=Cache)
    # The readiness probe under way, if any (see ``health``).
    readiness: asyncio.Task[str | None] | None = None


def service(request: Request) -> Service:
    svc: Service = request.app.state.service
    return svc
