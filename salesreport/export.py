"""Reports as CSV: asked for with ``Accept: text/csv`` or ``?format=csv`` (a link can't set headers).

UTF-8 with a byte-order mark, so that Excel reads Cyrillic addresses right
(LibreOffice takes it too); a header row with the JSON's field names; the same
exact decimal strings as the JSON.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from .accept import preferences
from .problems import invalid
from .schemas import FieldError


def wants_csv(request: Request) -> bool:
    """Whether the client asked for CSV; an unknown ``format`` is a 422."""
    chosen = request.query_params.get("format")
    if chosen is not None:
        if chosen not in ("csv", "json"):
            raise invalid([FieldError(field="format", message="must be csv or json")], "invalid query parameter")
        return chosen == "csv"
    wanted = [kind.lower() for kind in preferences(request.headers.get("accept", ""))]
    return next((kind for kind in wanted if kind in ("text/csv", "application/json")), None) == "text/csv"


def csv_response(rows: Sequence[msgspec.Struct], columns: Sequence[str], filename: str) -> Response:
    out = io.StringIO()
    out.write("\ufeff")
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([_cell(getattr(row, name)) for name in columns])
    return Response(
        out.getvalue().encode("utf-8"),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="{filename}"', "Vary": "Accept"},
    )


def _cell(value: Any) -> str:
    text = str(value)
    # A spreadsheet runs a cell that starts with these as a formula; addresses and names come from CSV imports.
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") and not _is_number(text) else text


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
