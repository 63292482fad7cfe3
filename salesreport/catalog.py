"""Loading the catalog (products and stores) from CSV files."""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from .schemas import CONTROL_CHARACTERS, MAX_ID, MAX_PRICE, parse_id, parse_money
from .zones import zone


class CatalogError(Exception):
    """A CSV file has bad rows; nothing was written."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


def _id(text: str) -> int:
    value = parse_id(text.strip())  # as an id in a URL: ASCII digits, 1 to MAX_ID
    if value is None:
        raise ValueError(f"id must be an integer from 1 to {MAX_ID}, got {text[:40]!r}")
    return value


def _text(limit: int) -> Callable[[str], str]:
    def parse(text: str) -> str:
        text = text.strip()
        if not 1 <= len(text) <= limit:
            raise ValueError(f"must be 1 to {limit} characters")
        if CONTROL_CHARACTERS.search(text):
            raise ValueError("must not contain control characters")
        return text

    return parse


def _price(text: str) -> int:
    cents = parse_money(text)
    if not 1 <= cents <= MAX_PRICE:
        raise ValueError(f"price must be between 0.01 and {MAX_PRICE / 100:.2f}")
    return cents


def _timezone(text: str) -> str:
    text = text.strip()
    zone(text)  # a zone this service can load, from the same pinned tzdata
    return text


def _retired(text: str) -> bool:
    value = text.strip().lower()
    if value in ("", "false", "no", "0"):
        return False
    if value in ("true", "yes", "1"):
        return True
    raise ValueError(f"must be true or false, got {text!r}")


PRODUCT_COLUMNS: dict[str, Callable[[str], Any]] = {"id": _id, "name": _text(200), "price": _price}
STORE_COLUMNS: dict[str, Callable[[str], Any]] = {"id": _id, "address": _text(500), "timezone": _timezone}
# A last column a file may have; without it, what is retired stays as it was.
OPTIONAL_COLUMNS: dict[str, Callable[[str], Any]] = {"retired": _retired}


def _records(reader: Any, path: Path, problems: list[str]) -> Iterator[tuple[int, list[str]]]:
    """Each record with the line it starts on (a quoted field may span lines); a file the reader cannot
    read on (a field over the csv module's limit) ends with a problem naming the line, not a traceback."""
    while True:
        line = reader.line_num + 1
        try:
            fields = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            problems.append(f"{path}:{line}: cannot read the file from here on: {exc}")
            return
        yield line, fields


def read_csv(path: Path, columns: dict[str, Callable[[str], Any]]) -> list[dict[str, Any]]:
    """Parse a catalog CSV; raise CatalogError naming every bad line."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise CatalogError([f"{path}: cannot read: {exc}"]) from None
    reader = csv.reader(io.StringIO(text, newline=""))
    header = next(reader, None)
    names = [h.strip().lower() for h in header or []]
    columns = {**columns, **OPTIONAL_COLUMNS} if names == [*columns, *OPTIONAL_COLUMNS] else columns
    expected = list(columns)
    if names != expected:
        raise CatalogError(
            [f"{path}:1: the header must be {','.join(expected)}[,retired], got {','.join(header or [])!r}"]
        )
    rows: dict[int, dict[str, Any]] = {}
    problems: list[str] = []
    for line, fields in _records(reader, path, problems):
        if not fields:
            continue
        if len(fields) != len(expected):
            problems.append(f"{path}:{line}: expected {len(expected)} fields, got {len(fields)}")
            continue
        row: dict[str, Any] = {}
        for (name, parse), value in zip(columns.items(), fields, strict=True):
            try:
                row[name] = parse(value)
            except ValueError as exc:
                problems.append(f"{path}:{line}: {name}: {exc}")
        if len(row) == len(expected):
            if row["id"] in rows:
                problems.append(f"{path}:{line}: id {row['id']} appears twice")
            rows[row["id"]] = row
    if problems:
        raise CatalogError(problems)
    return list(rows.values())
