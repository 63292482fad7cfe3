"""Settings and logging."""

from __future__ import annotations

import json
from typing import Any

import pytest
import structlog

from salesreport import config, logs


def test_json_logs_are_one_object_per_line(capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    logs.configure_logging("json")
    try:
        structlog.get_logger("t").info("hello", odd=object(), n=1)
        out = capsysbinary.readouterr().out.decode()
    finally:
        logs.configure_logging("console")
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


@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///", "sqlite:///:memory:", "sqlite+aiosqlite://"])
def test_a_sqlite_url_without_a_file_stops_with_a_message(monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    monkeypatch.setenv("DATABASE_URL", url)
    with pytest.raises(SystemExit, match="DATABASE_URL must name a SQLite file"):
        config.load()


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


@pytest.mark.parametrize(
    ("name", "raw", "message"),
    [
        ("SALESREPORT_POOL_SIZE", "0", "between 1"),  # 0 would mean no limit at all
        ("SALESREPORT_QUEUE_MAX_SALES", "999", "between 1000"),  # below one full array: arrays would 503 forever
        ("SALESREPORT_BATCH_MAX_SALES", "0", "between 1"),
        ("SALESREPORT_BODY_TIMEOUT_S", "nan", "between"),
        ("SALESREPORT_WRITE_TIMEOUT_S", "-1", "between"),
        ("SALESREPORT_KEY_LIFETIME_DAYS", "0", "between 1"),
        ("SALESREPORT_DRAIN_S", "soon", "a number"),
        ("SALESREPORT_MAX_LAG_S", "-1", "between 0"),
        ("SALESREPORT_LAG_CHECK_S", "0", "between 0.01"),
    ],
)
def test_settings_out_of_range_stop_with_a_message(
    monkeypatch: pytest.MonkeyPatch, name: str, raw: str, message: str
) -> None:
    monkeypatch.setenv(name, raw)
    with pytest.raises(SystemExit, match=name) as stopped:
        config.load()
    assert message in str(stopped.value)


def test_timeouts_and_flush_take_fractions(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SALESREPORT_BODY_TIMEOUT_S", "0.5")
    monkeypatch.setenv("SALESREPORT_DRAIN_S", "2.5")
    monkeypatch.setenv("SALESREPORT_WRITE_TIMEOUT_S", "1.5")
    monkeypatch.setenv("SALESREPORT_FLUSH_MS", "0.25")
    monkeypatch.setenv("SALESREPORT_KEY_LIFETIME_DAYS", "7")
    settings = config.load()
    assert (settings.body_timeout, settings.drain_seconds, settings.write_timeout) == (0.5, 2.5, 1.5)
    assert settings.flush_ms == 0.25
    assert settings.key_lifetime.days == 7


def test_settings_that_contradict_each_other_stop_with_a_message(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SALESREPORT_WRITE_TIMEOUT_S", "0.5")
    monkeypatch.setenv("SALESREPORT_FLUSH_MS", "1000")
    with pytest.raises(SystemExit, match="at least ten times"):
        config.load()
    monkeypatch.delenv("SALESREPORT_FLUSH_MS")
    monkeypatch.setenv("SALESREPORT_LOG_FORMAT", "JSON")
    with pytest.raises(SystemExit, match="json or console"):
        config.load()


@pytest.mark.parametrize(
    ("raw", "origin"),
    [
        ("https://Reports.Example.com", "https://reports.example.com"),
        ("https://reports.example.com:443/", "https://reports.example.com"),
        ("http://10.0.0.5:8080", "http://10.0.0.5:8080"),
        ("https://[2001:db8::1]:8443", "https://[2001:db8::1]:8443"),
        ("", None),
    ],
)
def test_the_public_url_is_kept_as_browsers_write_origin(
    monkeypatch: pytest.MonkeyPatch, raw: str, origin: str | None
) -> None:
    monkeypatch.setenv("SALESREPORT_PUBLIC_URL", raw)
    assert config.load().public_origin == origin


@pytest.mark.parametrize(
    "raw", ["reports.example.com", "ftp://x.example", "https://x.example/app", "https://x.example:port", "https://"]
)
def test_a_public_url_that_is_not_an_origin_stops_with_a_message(monkeypatch: pytest.MonkeyPatch, raw: str) -> None:
    monkeypatch.setenv("SALESREPORT_PUBLIC_URL", raw)
    with pytest.raises(SystemExit, match="SALESREPORT_PUBLIC_URL"):
        config.load()


def test_a_read_replica_is_a_postgresql_url_beside_a_postgresql_primary(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://u@primary/d")
    monkeypatch.setenv("DATABASE_READ_URL", "postgresql://u@replica/d")
    monkeypatch.setenv("SALESREPORT_MAX_LAG_S", "2.5")
    settings = config.load()
    assert settings.database_read_url == "postgresql+asyncpg://u@replica/d"
    assert (settings.max_lag, settings.lag_check) == (2.5, 1.0)
    monkeypatch.setenv("DATABASE_READ_URL", "sqlite:///replica.db")
    with pytest.raises(SystemExit, match="DATABASE_READ_URL must start with postgresql://"):
        config.load()
    monkeypatch.setenv("DATABASE_READ_URL", "postgresql://u@replica/d")
    monkeypatch.setenv("DATABASE_URL", "sqlite:///sales.db")
    with pytest.raises(SystemExit, match="needs a PostgreSQL DATABASE_URL"):
        config.load()


def test_access_lines_are_written_whole_in_writes_a_pipe_keeps_whole(monkeypatch: pytest.MonkeyPatch) -> None:
    """The lines of one event-loop turn go out together, in writes of at most PIPE_BUF bytes that end at
    a line's end: workers sharing stdout never splice each other's lines."""
    import asyncio
    import io

    writes: list[bytes] = []

    class Recorder(io.RawIOBase):
        def writable(self) -> bool:
            return True

        def write(self, data: Any) -> int:
            writes.append(bytes(data))
            return len(data)

    class Stdout:
        buffer = io.BufferedWriter(Recorder())

    monkeypatch.setattr("sys.stdout", Stdout())
    access = logs.AccessLog()
    access.json = True

    async def turn() -> None:
        for i in range(200):
            access.line(request_id=f"r{i}", method="POST", path="/sales", status=201, ms=1.0, key_id=None)
        await asyncio.sleep(0)  # the turn ends: the lines are written
        assert writes

    asyncio.run(turn())
    assert all(len(w) <= logs.PIPE_BUF and w.endswith(b"\n") for w in writes)
    lines = b"".join(writes).decode().splitlines()
    assert [json.loads(line)["request_id"] for line in lines] == [f"r{i}" for i in range(200)]
    assert len(writes) < 20  # not a write per line


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("postgresql://u:secret@h:abc/d", "is not a database URL"),  # the driver's int() traceback before
        ("postgresql://u@h:70000/d", "between 1 and 65535"),
        ("postgresql://u@h/d?sslmode=require", "sslmode is libpq's spelling"),  # asyncpg's TypeError before
        ("postgres://u@h/d?application=x", "options the PostgreSQL driver does not know: application"),
    ],
)
@pytest.mark.parametrize("name", ["DATABASE_URL", "DATABASE_READ_URL"])
def test_postgresql_urls_the_driver_cannot_take_stop_with_a_message(
    monkeypatch: pytest.MonkeyPatch, name: str, url: str, message: str
) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://u@h/d")
    monkeypatch.setenv(name, url)
    with pytest.raises(SystemExit, match=name) as stopped:
        config.load()
    assert message in str(stopped.value) and "secret" not in str(stopped.value)


def test_postgresql_urls_keep_the_drivers_options() -> None:
    url = "postgresql://u@h:5433/d?ssl=require&prepared_statement_cache_size=0"
    assert config.async_url(url) == "postgresql+asyncpg" + url.removeprefix("postgresql")
