"""Every error answer, in one format: RFC 9457 ``application/problem+json``."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Mapping
from typing import Any

import structlog
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from . import db, metrics
from .ingestion import Unavailable
from .schemas import MAX_ERRORS, FieldError, Problem, encoder

log = structlog.get_logger("salesreport.api")

PROBLEM = "application/problem+json"


class ProblemError(Exception):
    """An error answer. It lists at most MAX_ERRORS field errors and counts them
    all (``total``, when more were found than given), so that no answer grows
    with the request."""

    def __init__(
        self,
        status: int,
        title: str,
        detail: str,
        errors: list[FieldError] | None = None,
        headers: dict[str, str] | None = None,
        total: int | None = None,
    ) -> None:
        super().__init__(detail)
        self.problem = Problem(status=status, title=title, detail=detail)
        if errors is not None:
            self.problem.errors = errors[:MAX_ERRORS]
            self.problem.error_count = len(errors) if total is None else total
        self.headers = headers


def problem_response(problem: Problem, headers: Mapping[str, str] | None = None) -> Response:
    return Response(encoder.encode(problem), status_code=problem.status, media_type=PROBLEM, headers=headers)


# An answer read with a key or a session cookie (a report, the catalog, a sale, the metrics): no shared
# cache may keep it.
PRIVATE = {"Cache-Control": "private, no-store"}


def json_response(value: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    return Response(encoder.encode(value), status_code=status, media_type="application/json", headers=headers)


def invalid(
    errors: list[FieldError], detail: str = "the request has invalid fields", total: int | None = None
) -> ProblemError:
    return ProblemError(422, "Unprocessable Content", detail, errors, total=total)


def unavailable(exc: Unavailable) -> ProblemError:
    return ProblemError(503, "Service Unavailable", exc.detail, headers={"Retry-After": str(exc.retry_after)})


def forbidden(detail: str, errors: list[FieldError] | None = None) -> ProblemError:
    """403: the caller's key may not do this."""
    metrics.key_rejected("forbidden")
    return ProblemError(403, "Forbidden", detail, errors)


_last_down_warning = 0.0


def _database_down(event: str, exc: BaseException) -> ProblemError:
    """The 503 for a database that cannot be reached, logged once a second at
    most: an outage under load would otherwise write a line per request."""
    global _last_down_warning
    now = time.monotonic()
    if now - _last_down_warning >= 1:
        _last_down_warning = now
        log.warning(f"{event}: database unavailable", error=str(exc))
    return unavailable(Unavailable("the database is unavailable", retry_after=2))


@contextlib.contextmanager
def database_errors(event: str) -> Iterator[None]:
    """A database that cannot be reached answers 503; any other database
    error (a missing table, a bad query) is a bug, and goes on to be a 500."""
    try:
        yield
    except Exception as exc:
        if db.is_unavailable(exc):
            raise _database_down(event, exc) from None
        raise


_TITLES = {404: "Not Found", 405: "Method Not Allowed", 400: "Bad Request"}


async def on_problem(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ProblemError)
    return problem_response(exc.problem, exc.headers)


async def on_http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    title = _TITLES.get(exc.status_code, "Error")
    detail = {404: f"no such path: {request.url.path[:200]}", 405: f"{request.method} is not allowed here"}.get(
        exc.status_code, str(exc.detail)
    )
    return problem_response(Problem(status=exc.status_code, title=title, detail=detail), exc.headers)


async def on_error(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error", path=request.url.path, request_id=request.scope.get("salesreport.request_id"))
    return problem_response(Problem(status=500, title="Internal Server Error", detail="an unexpected error occurred"))
