"""A signed-in owner's session: a cookie naming the key, signed with the database's session secret.

The cookie holds the key's id and when it was signed, nothing else; it is
valid for ``LIFETIME`` and only while that key is active, so revoking the
key ends its sessions at once on every worker (the key ring reloads on change).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta

import itsdangerous

COOKIE = "sr_session"
LIFETIME = timedelta(hours=12)


class Sessions:
    def __init__(self, secret: str, clock: Callable[[], datetime]) -> None:
        class Signer(itsdangerous.TimestampSigner):
            def get_timestamp(self) -> int:
                return int(clock().timestamp())

        self._signer = Signer(secret, salt="salesreport-session")

    def cookie(self, key_id: int) -> str:
        return self._signer.sign(str(key_id)).decode()

    def key_id(self, cookie: str | None) -> int | None:
        """The key a cookie names, if its signature holds and it is younger than ``LIFETIME``."""
        if not cookie or len(cookie) > 200:
            return None
        try:
            value = self._signer.unsign(cookie, max_age=int(LIFETIME.total_seconds()))
        except itsdangerous.BadSignature:
            return None
        return int(value) if value.isdigit() else None
