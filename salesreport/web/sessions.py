"""A signed-in owner's session: a random token in an HttpOnly cookie, its SHA-256 in ``sessions``.

It lasts ``LIFETIME``. Signing out deletes it (a copied cookie dies too); revoking the key ends it at
once on every worker (the key ring reloads on change, and a session only names its key).
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from .. import db

COOKIE = "sr_session"
LIFETIME = timedelta(hours=12)
_TOKEN_CHARS = 43  # token_urlsafe(32)


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


async def open_session(conn: AsyncConnection, key_id: int, now: datetime) -> str:
    """A new session for the key; the token to put in the cookie. Expired sessions are cleared."""
    token = secrets.token_urlsafe(32)
    s = db.sessions
    await conn.execute(sa.delete(s).where(s.c.expires_at <= now))
    await conn.execute(
        sa.insert(s).values(token_hash=_digest(token), key_id=key_id, created_at=now, expires_at=now + LIFETIME)
    )
    return token


async def session_key_id(conn: AsyncConnection, token: str | None, now: datetime) -> int | None:
    """The key a live session names, or None."""
    if not token or len(token) != _TOKEN_CHARS:
        return None
    s = db.sessions
    query = sa.select(s.c.key_id).where(s.c.token_hash == _digest(token), s.c.expires_at > now)
    key_id = await conn.scalar(query)
    return int(key_id) if key_id is not None else None


async def close_session(conn: AsyncConnection, token: str | None) -> None:
    if token:
        await conn.execute(sa.delete(db.sessions).where(db.sessions.c.token_hash == _digest(token)))
