"""Reports as CSV: asked for with ``Accept: text/csv`` or ``?format=csv`` (a link can't set headers).

UTF-8 with a byte-order mark, so that Excel reads Cyrillic addresses right
(LibreOffice takes it too); a header row with the JSON's field names; the same
exact decimal strings as the JSON.
"""

from __future__ import annotations

import csv as csv_module
import io
import re
from collections.abc import Sequence
from typing import Any

import msgspec
from starlette.requests import Request

from .accept import choose
from .headers import joined
from .problems import PRIVATE, invalid
from .schemas import FieldError, encoder


def wants_csv(request: Request) -> bool:
    """Whether the client asked for CSV; an unknown ``format`` is a 422."""
    chosen = request.query_params.get("format")
    if chosen is not None:
        if chosen not in ("csv", "json"):
            raise invalid([FieldError(field="format", message="must be csv or json")], "invalid query parameter")
        return chosen == "csv"
    # JSON first: it is the answer when both are as welcome, or neither is.
    return choose(joined(request.scope, b"accept"), ("application/json", "text/csv")) == "text/csv"


# Reports are live figures, read with a key or a session cookie: no shared cache may keep them, and the
# same URL answers JSON or CSV by Accept, gzip-compressed or not by Accept-Encoding (see ``compression``).
_REPORT_HEADERS = {
    **PRIVATE,
    "Vary": "Accept, Accept-Encoding, Cookie",
    "X-Content-Type-Options": "nosniff",
}


def encode_report(
    rows: Sequence[msgspec.Struct], csv: tuple[Sequence[str], str] | None
) -> tuple[bytes, dict[str, str]]:
    """A report's rows as JSON, or as CSV (``csv``: its columns and the file's name): the body and its headers."""
    if csv is None:
        return encoder.encode(rows), {"Content-Type": "application/json", **_REPORT_HEADERS}
    columns, filename = csv
    out = io.StringIO()
    out.write("\ufeff")
    writer = csv_module.writer(out, lineterminator="\r\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([_cell(getattr(row, name)) for name in columns])
    headers = {
        "Content-Type": "text/csv; charset=utf-8",
        "Content-Disposition": f'attachment; filename="{filename}"',
        **_REPORT_HEADERS,
    }
    return out.getvalue().encode("utf-8"), headers


_NUMBER = re.compile(r"-?[0-9]+(\.[0-9]+)?")


def _cell(value: Any) -> str:
    text = str(value)
    # A spreadsheet runs a cell that starts with these as a formula; addresses and names come from CSV imports.
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") and not _is_number(text) else text


def _is_number(text: str) -> bool:
    """A plain decimal such as ``-12.50`` (not ``-inf`` or ``+1_000``, which a spreadsheet reads otherwise)."""
    return _NUMBER.fullmatch(text) is not None
