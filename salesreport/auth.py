"""API keys and roles: who may read what, and post sales for which store.

An ``owner`` key reads and writes everything; a ``pos`` key acts for its
store; a ``metrics`` key reads ``/metrics`` and nothing else (for a scraper,
which then holds no key to the sales).

Keys are random, shown once, and stored only as a SHA-256 hash. Every worker
holds the keys in memory and reloads them the moment they change (see
``changes``). Until the first key is created the
service is open, and ``serve`` then binds to loopback only.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import hmac
import ipaddress
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import sqlalchemy as sa
import structlog
from sqlalchemy.ext.asyncio import AsyncConnection

from . import db, metrics
from .changes import Changes
from .db.replica import Reads

log = structlog.get_logger("salesreport.auth")

PREFIX = "sr_"
# What ``new_key`` makes: the prefix and 32 random bytes in URL-safe base64.
_KEY_FORM = re.compile(re.escape(PREFIX) + r"[A-Za-z0-9_-]{43}")
ROLES = ("owner", "pos", "metrics")


@dataclass(frozen=True, slots=True)
class Key:
    id: int
    role: str
    store_id: int | None
    hash: str


@functools.lru_cache(maxsize=256)
def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address, or "localhost") is this machine's loopback (remembered: each
    request asks, and its peers are few)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@functools.lru_cache(maxsize=256)
def names_loopback(host_header: str) -> bool:
    """Whether a ``Host`` header (a name or address, and maybe a port) names this machine's loopback."""
    try:
        host = urlsplit("//" + host_header).hostname
    except ValueError:
        return False
    return host is not None and is_loopback(host)


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
    await db.bump_version(conn, "keys")
    return key_id, key


async def revoke_key(conn: AsyncConnection, key_id: int) -> bool:
    result = await conn.execute(
        sa.update(db.api_keys)
        .where(db.api_keys.c.id == key_id, db.api_keys.c.revoked_at.is_(None))
        .values(revoked_at=datetime.now(UTC))
    )
    if result.rowcount == 0:
        return False
    await db.bump_version(conn, "keys")
    return True


async def list_keys(conn: AsyncConnection) -> Sequence[Any]:
    k = db.api_keys
    result = await conn.execute(
        sa.select(k.c.id, k.c.role, k.c.store_id, k.c.created_at, k.c.last_used_at, k.c.revoked_at).order_by(k.c.id)
    )
    return result.all()


# --- keys in a worker -----------------------------------------------------------


@dataclass
class KeyRing:
    """This process's copy of the keys, kept fresh, and when each was last used."""

    database: db.Database
    changes: Changes
    by_hash: dict[str, Key] = field(default_factory=dict)
    # Told apart from unknown keys in the metrics only: the caller hears "unknown or revoked" for both.
    revoked: frozenset[str] = frozenset()
    # Every key's id, revoked or not: a session naming another may name a key created a moment ago.
    ids: frozenset[int] = frozenset()
    # Protected once any key was ever created: revoking the last key must not
    # reopen the service.
    protected: bool = False
    version: int = -1
    used: dict[int, datetime] = field(default_factory=dict)
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    _task: asyncio.Task[None] | None = None
    # Which database answers; None: the primary, always.
    reads: Reads | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._record_use(), name="salesreport-keys-last-used")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._flush_use()

    def stale(self) -> bool:
        """Whether the keys may have changed since they were loaded: else ``refresh()`` (without ``recheck``)
        has nothing to do."""
        return self.changes.stale("keys", self.version)

    async def refresh(self, *, recheck: bool = False) -> None:
        """Reload the keys if they may have changed; raises if the database is down.

        ``recheck``: read the keys' counter even if the copy is fresh (it may be up to
        ``changes.BOUND`` old), unless a read began after this call did.
        """
        asked = self.changes.clock() if recheck else None
        if not self.changes.stale("keys", self.version, since=asked):
            return
        if self.reads is not None and self.reads.keeps(self.version >= 0):
            return
        async with self._lock:
            if not self.changes.stale("keys", self.version, since=asked):
                return
            started = self.changes.clock()
            try:
                async with self.database.control.connect() as conn:
                    version = await db.get_version(conn, "keys")
                    if version == self.version:
                        self.changes.seen("keys", version, started)
                        return
                    rows = (await conn.execute(sa.select(db.api_keys))).all()
            except Exception as exc:
                if self.reads is not None and self.reads.keeps(self.version >= 0, exc):
                    return
                raise
            self.by_hash = {r.hash: Key(r.id, r.role, r.store_id, r.hash) for r in rows if r.revoked_at is None}
            self.revoked = frozenset(r.hash for r in rows if r.revoked_at is not None)
            self.ids = frozenset(r.id for r in rows)
            self.protected = bool(rows)
            self.version = version
            self.changes.seen("keys", version, started)

    @staticmethod
    def has_key_form(token: str) -> bool:
        """Whether ``token`` could be a key (``new_key``'s form): only such a token is worth a read."""
        return _KEY_FORM.fullmatch(token.strip()) is not None

    def active(self, key_id: int) -> Key | None:
        """The key with this id, unless it was revoked (what a dashboard session names)."""
        for key in self.by_hash.values():
            if key.id == key_id:
                return key
        return None

    def authenticate(self, authorization: str | None) -> Key | None:
        """The caller's key; None while the service is open (no key ever created)."""
        if not self.protected:
            return None
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            metrics.key_rejected("missing")
            raise Unauthenticated("send an API key: Authorization: Bearer <key>")
        hashed = digest(token.strip())
        key = self.by_hash.get(hashed)
        if key is None or not hmac.compare_digest(key.hash, hashed):
            metrics.key_rejected("revoked" if hashed in self.revoked else "unknown")
            raise Unauthenticated("the API key is unknown or revoked")
        self.used[key.id] = datetime.now(UTC)
        return key

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
        except Exception as exc:  # a later flush records newer times; nothing else waits on this
            log.warning("cannot record when keys were last used", error=repr(exc))
