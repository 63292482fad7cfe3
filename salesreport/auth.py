"""API keys and roles: who may read what, and post sales for which store.

Keys are random, shown once, and stored only as a SHA-256 hash. Every worker
holds the keys in memory and reloads them the moment they change: PostgreSQL
tells it with NOTIFY; on SQLite a worker reads the keys' version (a local read
of a few microseconds) on each request. Until the first key is created the
service is open, and ``serve`` then binds to loopback only.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import secrets
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import asyncpg
import sqlalchemy as sa
import structlog
from sqlalchemy.ext.asyncio import AsyncConnection

from . import db

log = structlog.get_logger("salesreport.auth")

PREFIX = "sr_"
CHANNEL = "salesreport_keys"
ROLES = ("owner", "pos")


@dataclass(frozen=True, slots=True)
class Key:
    id: int
    role: str
    store_id: int | None
    hash: str


def new_key() -> str:
    return PREFIX + secrets.token_urlsafe(32)


def digest(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


class Unauthenticated(Exception):
    """No key, or a key that is unknown or revoked."""


# --- keys in the database (used by the CLI) -------------------------------------


async def create_key(conn: AsyncConnection, role: str, store_id: int | None) -> tuple[int, str]:
    key = new_key()
    result = await conn.execute(
        sa.insert(db.api_keys)
        .values(hash=digest(key), role=role, store_id=store_id, created_at=datetime.now(UTC))
        .returning(db.api_keys.c.id)
    )
    key_id = int(result.scalar_one())
    await _changed(conn)
    return key_id, key


async def revoke_key(conn: AsyncConnection, key_id: int) -> bool:
    result = await conn.execute(
        sa.update(db.api_keys)
        .where(db.api_keys.c.id == key_id, db.api_keys.c.revoked_at.is_(None))
        .values(revoked_at=datetime.now(UTC))
    )
    if result.rowcount == 0:
        return False
    await _changed(conn)
    return True


async def list_keys(conn: AsyncConnection) -> Sequence[Any]:
    k = db.api_keys
    result = await conn.execute(
        sa.select(k.c.id, k.c.role, k.c.store_id, k.c.created_at, k.c.last_used_at, k.c.revoked_at).order_by(k.c.id)
    )
    return result.all()


async def _changed(conn: AsyncConnection) -> None:
    await db.bump_version(conn, "keys")
    if conn.dialect.name == "postgresql":
        # Delivered to every worker when this transaction commits.
        await conn.execute(sa.select(sa.func.pg_notify(CHANNEL, "")))


# --- keys in a worker -----------------------------------------------------------


@dataclass
class KeyRing:
    """This process's copy of the keys, kept fresh, and when each was last used."""

    database: db.Database
    by_hash: dict[str, Key] = field(default_factory=dict)
    # Protected once any key was ever created: revoking the last key must not
    # reopen the service.
    protected: bool = False
    version: int = -1
    used: dict[int, datetime] = field(default_factory=dict)
    _listening: bool = False
    _stale: bool = True
    _sqlite: sqlite3.Connection | None = None
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _closing: bool = False

    def start(self) -> None:
        url = self.database.writer.url
        if url.get_backend_name() == "sqlite":
            self._sqlite = sqlite3.connect(url.database or "", check_same_thread=False)
        else:
            dsn = url.set(drivername="postgresql").render_as_string(hide_password=False)
            self._tasks.append(asyncio.create_task(self._listen(dsn), name="salesreport-keys-listener"))
        self._tasks.append(asyncio.create_task(self._record_use(), name="salesreport-keys-last-used"))

    async def close(self) -> None:
        self._closing = True
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._flush_use()
        if self._sqlite is not None:
            self._sqlite.close()

    async def refresh(self) -> None:
        """Reload the keys if they may have changed; raises if the database is down."""
        if self._sqlite is not None:
            row = self._sqlite.execute("SELECT version FROM versions WHERE name = 'keys'").fetchone()
            if (row[0] if row else 0) != self.version:
                self._stale = True
        elif not self._listening:
            self._stale = True
        if not self._stale:
            return
        async with self._lock:
            if not self._stale:
                return
            async with self.database.reader.connect() as conn:
                version = await db.get_version(conn, "keys")
                rows = (await conn.execute(sa.select(db.api_keys))).all()
            self.by_hash = {r.hash: Key(r.id, r.role, r.store_id, r.hash) for r in rows if r.revoked_at is None}
            self.protected = bool(rows)
            self.version = version
            self._stale = bool(self._sqlite is None and not self._listening)

    def authenticate(self, authorization: str | None) -> Key | None:
        """The caller's key; None while the service is open (no key ever created)."""
        if not self.protected:
            return None
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthenticated("send an API key: Authorization: Bearer <key>")
        hashed = digest(token.strip())
        key = self.by_hash.get(hashed)
        if key is None or not hmac.compare_digest(key.hash, hashed):
            raise Unauthenticated("the API key is unknown or revoked")
        self.used[key.id] = datetime.now(UTC)
        return key

    async def _listen(self, dsn: str) -> None:
        while not self._closing:
            try:
                conn = await asyncpg.connect(dsn, timeout=5)
            except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
                log.warning("keys listener cannot connect", error=str(exc))
                await asyncio.sleep(1)
                continue
            lost = asyncio.Event()
            try:
                await conn.add_listener(CHANNEL, lambda *_: setattr(self, "_stale", True))
                conn.add_termination_listener(lambda _conn, lost=lost: lost.set())
                self._stale = True  # changes may have been missed while not listening
                self._listening = True
                while not lost.is_set():
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(lost.wait(), 10)
                    if not lost.is_set():
                        await conn.execute("SELECT 1", timeout=5)  # notice a dead connection
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
                log.warning("keys listener lost its connection", error=str(exc))
            finally:
                self._listening = False
                self._stale = True
                with contextlib.suppress(Exception):
                    await conn.close(timeout=1)

    async def _record_use(self) -> None:
        while True:
            await asyncio.sleep(10)
            await self._flush_use()

    async def _flush_use(self) -> None:
        if not self.used:
            return
        used, self.used = self.used, {}
        k = db.api_keys
        try:
            async with self.database.writer.begin() as conn:
                await conn.execute(
                    sa.update(k).where(k.c.id == sa.bindparam("key_id")).values(last_used_at=sa.bindparam("at")),
                    [{"key_id": key_id, "at": at} for key_id, at in sorted(used.items())],
                )
        except db.ERRORS as exc:
            log.warning("cannot record when keys were last used", error=str(exc))
