"""How a POST of sales can fail short of being stored."""

from __future__ import annotations

from ..schemas import FieldError


class Malformed(Exception):
    """The body is not JSON (or not JSON this service can represent)."""


class Rejected(Exception):
    """The sales were refused; nothing of the request was stored.

    ``errors`` names at most ``schemas.MAX_ERRORS`` of them; ``total`` counts all.
    """

    def __init__(self, errors: list[FieldError], total: int | None = None) -> None:
        super().__init__(errors)
        self.errors = errors
        self.total = len(errors) if total is None else total


class Unavailable(Exception):
    """The sales could not be stored now; the client should retry later."""

    def __init__(self, detail: str, retry_after: int = 1) -> None:
        super().__init__(detail)
        self.detail = detail
        self.retry_after = retry_after
