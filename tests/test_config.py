"""Settings and logging."""

from __future__ import annotations

import json

import pytest
import structlog

from salesreport import config


def test_json_logs_are_one_object_per_line(capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    config.configure_logging("json")
    try:
        structlog.get_logger("t").info("hello", odd=object(), n=1)
        out = capsysbinary.readouterr().out.decode()
    finally:
        config.configure_logging("console")
    line = json.loads(out.strip().splitlines()[-1])
    assert line["event"] == "hello"
    assert line["n"] == 1
    assert line["odd"].startswith("<object")
    assert line["level"] == "info"


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("sqlite:///x.db", "sqlite+aiosqlite:///x.db"),
        ("postgresql://u@h:5432/d", "postgresql+asyncpg://u@h:5432/d"),
        ("postgres://u@h/d", "postgresql+asyncpg://u@h/d"),
    ],
)
def test_database_urls(url: str, expected: str) -> None:
    assert config.async_url(url) == expected


def test_bad_settings_stop_with_a_message(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SALESREPORT_TIMEZONE", "Mars/Olympus")
    with pytest.raises(SystemExit, match="IANA"):
        config.load()
    monkeypatch.setenv("SALESREPORT_TIMEZONE", "UTC")
    monkeypatch.setenv("SALESREPORT_POOL_SIZE", "many")
    with pytest.raises(SystemExit, match="integer"):
        config.load()
    monkeypatch.setenv("SALESREPORT_POOL_SIZE", "4")
    monkeypatch.setenv("DATABASE_URL", "mysql://x")
    with pytest.raises(SystemExit, match="DATABASE_URL"):
        config.load()
