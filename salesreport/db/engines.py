"""Connections: the engines of readers and of the writer, and which errors mean "the database is away"."""

from __future__ import annotations

import os
import sqlite3
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from ..config import Settings
from . import partitions, pooling
from .schema import SLOTS

if TYPE_CHECKING:
    from .sqlite import SQLiteWriter

SQLITE_PRAGMAS = ("PRAGMA journal_mode=WAL", "PRAGMA synchronous=FULL", "PRAGMA busy_timeout=10000")
# The writer's own connections (PostgreSQL): the batches, the keys' last-used
# times, and reloads of the catalog and the keys (``control``). Readers never
# take these, so reports cannot starve ingestion.
WRITER_POOL = 4
# A statement of a request that runs longer than this is cancelled (the client has long given up). The
# commands (migrate, check, archive) and the daily upkeep work on whole tables and have no such limit.
REQUEST_STATEMENT_S = 30.0


@dataclass(frozen=True, slots=True)
class Database:
    """Readers use ``reader``; the process's one writer uses ``writer``.

    They are separate pools, so that report traffic cannot take the
    connections the writer needs; ``control`` reads what the writer and every
    request depend on (the catalog, the API keys) on the writer's side of
    that split. Readers run in autocommit: one statement,
    one round trip (a reader that needs a snapshot over several statements
    sets its isolation level). On SQLite the batches of sales are written by a
    thread with its own connection (``sqlite_writer``), inside ``BEGIN
    IMMEDIATE``; readers never block it (WAL).
    """

    reader: AsyncEngine
    writer: AsyncEngine
    control: AsyncEngine
    sqlite_writer: SQLiteWriter | None = None
    # Readers of the streaming replica, if one is configured (``replica`` says when to use it).
    replica: AsyncEngine | None = None
    # The batchers' connections between two batches (see ``postgres.write_connection``).
    # Each: SQLAlchemy's connection, asyncpg's under it, and whether it goes through a pooler.
    held: list[tuple[AsyncConnection, Any, bool]] = field(default_factory=list)

    @property
    def dialect(self) -> str:
        return self.writer.dialect.name

    async def dispose(self) -> None:
        while self.held:
            await self.held.pop()[0].close()
        await self.reader.dispose()
        await self.writer.dispose()
        await self.control.dispose()
        if self.replica is not None:
            await self.replica.dispose()
        if self.sqlite_writer is not None:
            self.sqlite_writer.close()


def _sqlite_engine(url: str, *, immediate: bool, pool_size: int) -> AsyncEngine:
    engine = create_async_engine(url, pool_size=pool_size, max_overflow=0, pool_timeout=30)

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy emit BEGIN itself (pysqlite's own BEGIN is deferred).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        for pragma in SQLITE_PRAGMAS:
            cursor.execute(pragma)
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: sa.Connection) -> None:
        if conn.get_execution_options().get("isolation_level") != "AUTOCOMMIT":
            conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine


def connect(settings: Settings, *, command_timeout: float | None = REQUEST_STATEMENT_S) -> Database:
    """The engines of a worker (statements cancelled after ``command_timeout``), or of a command (None)."""
    from .sqlite import SQLiteWriter

    url = settings.database_url
    if settings.is_sqlite:
        return Database(
            reader=_sqlite_engine(url, immediate=False, pool_size=settings.pool_size).execution_options(
                isolation_level="AUTOCOMMIT"
            ),
            writer=_sqlite_engine(url, immediate=True, pool_size=1),
            control=_sqlite_engine(url, immediate=False, pool_size=1).execution_options(isolation_level="AUTOCOMMIT"),
            sqlite_writer=SQLiteWriter(sa.engine.make_url(url).database or ""),
        )

    def engine(at: str, pool_size: int) -> AsyncEngine:
        return postgres_engine(at, pool_size, command_timeout=command_timeout)

    writer = engine(url, WRITER_POOL)
    return Database(
        reader=engine(url, settings.pool_size).execution_options(isolation_level="AUTOCOMMIT"),
        writer=writer,
        control=writer.execution_options(isolation_level="AUTOCOMMIT"),  # the same pool
        replica=None
        if settings.database_read_url is None
        else postgres_engine(
            settings.database_read_url, settings.pool_size, command_timeout=command_timeout
        ).execution_options(isolation_level="AUTOCOMMIT"),
    )


def postgres_engine(url: str | sa.URL, pool_size: int = 5, *, command_timeout: float | None = None) -> AsyncEngine:
    """An engine on PostgreSQL, directly or through a transaction pooler (see ``pooling``); statements
    longer than ``command_timeout`` seconds are cancelled (None: no limit)."""
    engine = create_async_engine(
        url,
        pool_size=pool_size,
        max_overflow=0,
        pool_timeout=5,
        pool_pre_ping=False,
        connect_args={"timeout": 5, "command_timeout": command_timeout},
    )
    event.listen(engine.sync_engine, "do_connect", pooling.choose)
    event.listen(engine.sync_engine, "handle_error", _mark_connecting)
    event.listen(engine.sync_engine, "checkout", _closed_in_the_pool)

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: sa.Connection) -> None:
        options = conn.get_execution_options()
        writes = options.get("isolation_level") != "AUTOCOMMIT" and not options.get("postgresql_readonly")
        if writes and pooling.is_pooled(conn.connection.info):
            conn.exec_driver_sql(pooling.DURABLE)

    return engine


def _closed_in_the_pool(_dbapi_connection: Any, _record: Any, proxy: Any) -> None:
    """SQLAlchemy's ``checkout``: a pooled connection that the server closed while it waited (a restart,
    its backend ended) is known closed to asyncpg, which heard the socket close: SQLAlchemy then takes a
    new one in its place, so the first request after the database came back does not fail on it (a 503
    for a database that answers). No round trip: a connection that is open is not pinged."""
    if proxy.driver_connection.is_closed():
        raise sa.exc.DisconnectionError("the connection was closed while in the pool")


async def one_snapshot(conn: AsyncConnection) -> AsyncConnection:
    """``conn`` (fresh from a reader's pool, nothing run on it yet), its reads from now on in one
    transaction that sees the data as of its first one.

    The readers run in autocommit, each statement seeing what was committed when it began: a page made
    of several reads would otherwise show a sale committed between two of them in one table and not in
    the next (in the month's revenue, say, but not among its top stores). PostgreSQL's REPEATABLE READ
    keeps the first statement's snapshot (read only: through a pooler, no ``DURABLE`` setting either),
    and so does SQLite's read transaction (``BEGIN``, see ``_sqlite_engine``); the transaction is
    rolled back when the connection goes back to its pool. Used by ``replica.Reads.read`` on the
    primary only.
    """
    if conn.dialect.name == "postgresql":
        return await conn.execution_options(isolation_level="REPEATABLE READ", postgresql_readonly=True)
    return await conn.execution_options(isolation_level="SERIALIZABLE")


async def driver_connection(conn: AsyncConnection) -> Any:
    """The driver's own connection under SQLAlchemy's (asyncpg's, on PostgreSQL)."""
    raw = (await conn.get_raw_connection()).driver_connection
    assert raw is not None
    return raw


def writer_slot(database: Database) -> int:
    """This process's own rollup slot, the first its batches try (see ``postgres._preference``); SQLite,
    with one writer, writes into slot 0."""
    return 0 if database.sqlite_writer is not None else os.getpid() % SLOTS


def upsert(conn: AsyncConnection, table: sa.Table) -> Any:
    """An ``INSERT`` of the dialect in use, which has ``on_conflict_do_*``."""
    module = postgresql if conn.dialect.name == "postgresql" else sqlite
    return module.insert(table)


# --- is the database away? ------------------------------------------------------

# SQLSTATE classes and codes of a server that is unreachable, restarting,
# overloaded or cannot take writes now: 08 connection exception, 53
# insufficient resources (disk full, too many connections), 57P01..57P03
# shutting down or starting up, 57014 statement timeout, 58 system error,
# 25006 read-only (a standby, or a primary set read-only: after a failover).
_UNAVAILABLE_CLASSES = ("08", "53", "58")
_UNAVAILABLE_STATES = {"57P01", "57P02", "57P03", "57014", "25006"}
# SQLite says so in words only.
_SQLITE_UNAVAILABLE = ("database is locked", "unable to open database", "disk i/o error", "disk is full")


# Set on an error raised while connecting (see ``_mark_connecting``).
_CONNECTING = "salesreport_while_connecting"


def _mark_connecting(context: sa.engine.ExceptionContext) -> None:
    """SQLAlchemy's ``handle_error``: marks an error the database gave while connecting, which
    SQLAlchemy tells by having no connection to give. Whatever its SQLSTATE (55000 for a database not
    accepting connections, 3D000 for one that is gone, class 28 for a refused login), the database
    refuses this service now; the same codes raised by a statement are a bug (55000: ``currval`` too
    early). Only an error with a SQLSTATE is the database's: the driver's own (asyncpg's
    ``ClientConfigurationError`` for a DATABASE_URL it cannot use, ``?ssl=bogus``) is a fault of the
    deployment, a 500, as is any other error of the service's own."""
    if (
        context.connection is None
        and not context.is_pre_ping
        and context.sqlalchemy_exception is not None
        and sqlstate(context.original_exception) is not None
    ):
        setattr(context.sqlalchemy_exception, _CONNECTING, True)


def sqlstate(exc: BaseException) -> str | None:
    """The SQLSTATE of a driver error, raw or wrapped by SQLAlchemy."""
    state = getattr(exc, "sqlstate", None) or getattr(getattr(exc, "orig", None), "sqlstate", None)
    return state if isinstance(state, str) else None


def is_partition_race(exc: BaseException) -> bool:
    """Whether ``exc`` is a sale routed to the DEFAULT partition while its month's partition was being
    made (``partitions``): its check fails once the other transaction commits; written again, the
    sale goes to the new partition."""
    table = getattr(exc, "table_name", None) or getattr(getattr(exc, "orig", None), "table_name", None)
    return sqlstate(exc) == "23514" and table == partitions.DEFAULT


def is_unavailable(exc: BaseException) -> bool:
    """Whether ``exc`` says the database cannot be reached now (503, retry),
    rather than that the query or the schema is wrong (a 500 and a bug)."""
    if isinstance(exc, sa.exc.DBAPIError) and (exc.connection_invalidated or getattr(exc, _CONNECTING, False)):
        return True
    state = sqlstate(exc)
    if state is not None:
        return state[:2] in _UNAVAILABLE_CLASSES or state in _UNAVAILABLE_STATES
    # SQLAlchemy wraps the driver's error, which may wrap asyncpg's own.
    orig = getattr(exc, "orig", None)
    for error in (exc, orig, getattr(orig, "__cause__", None)):
        if isinstance(error, sa.exc.TimeoutError | OSError | TimeoutError):  # pool, network, connect timeout
            return True
        if isinstance(error, sqlite3.OperationalError):
            return any(words in str(error).lower() for words in _SQLITE_UNAVAILABLE)
        if type(error).__name__ == "InterfaceError" and "closed" in str(error):  # asyncpg: connection is closed
            return True
        if type(error).__name__ == "InternalClientError":
            # asyncpg's protocol upset by a message the server sent unasked on an idle connection: the
            # error of a backend that ended (a restart, pg_terminate_backend), read before its close.
            return True
    return False
