"""Alembic environment: one migration history for SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from typing import Any

from alembic import context
from sqlalchemy import Connection, event, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from salesreport import config
from salesreport.db import metadata
from salesreport.db.engines import postgres_engine

target_metadata = metadata


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()


def _sqlite_engine(url: str) -> AsyncEngine:
    """An engine whose transactions hold DDL too: the driver's own transaction control would begin one
    only before an INSERT, UPDATE or DELETE, so a migration that failed or was interrupted halfway would
    leave the tables it had created or copied so far, and a schema no revision describes."""
    engine = create_async_engine(url)

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # SQLAlchemy emits BEGIN itself, below

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Connection) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


async def _online() -> None:
    url = context.config.get_main_option("sqlalchemy.url") or config.load().database_url
    # On PostgreSQL, the service's own engine: it works directly and through a transaction pooler.
    engine = postgres_engine(url) if make_url(url).get_backend_name() == "postgresql" else _sqlite_engine(url)
    try:
        async with engine.connect() as connection:
            await connection.run_sync(_run)
            await connection.commit()
    finally:
        await engine.dispose()


if context.is_offline_mode():
    context.configure(url=context.config.get_main_option("sqlalchemy.url"), target_metadata=target_metadata)
    with context.begin_transaction():
        context.run_migrations()
else:
    asyncio.run(_online())
