"""Whether a PostgreSQL URL leads to the server itself or through a transaction pooler (PgBouncer).

Through a pooler in transaction mode each transaction (each statement, in
autocommit) may run on another server connection, so nothing may outlive a
transaction on the server: no session settings, no named prepared
statements (PgBouncer 1.18 cannot track them; asyncpg and SQLAlchemy's
dialect cache them by name). The first connection to a URL tells which it
is: PgBouncer refuses a startup packet that sets a server setting, which
the server itself accepts; and a PgBouncer told to ignore that setting
(``ignore_startup_parameters``) gives its clients a process id of its own,
not that of the server process that runs their statements. That answer holds
for the process:

- **direct**: ``synchronous_commit`` set for the session, and both caches of
  named prepared statements on (each statement is parsed and planned once
  per connection);
- **pooled**: no session setting, every statement an unnamed one (asyncpg
  parses it, then binds and runs it, with no sync in between, so on the same
  server connection), and each writing transaction sets ``synchronous_commit``
  itself (``DURABLE``).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.util import await_

# Acknowledged writes are durable whatever the server's default says.
SESSION_SETTINGS = {"synchronous_commit": "on"}
DURABLE = "SET LOCAL synchronous_commit = on"
# What PgBouncer says of a startup parameter it does not pass on.
_REFUSED = "unsupported startup parameter"
# Where the pool keeps the answer, in each connection's ``info``.
POOLED = "pooled"

_answers: dict[tuple[Any, ...], bool] = {}


def choose(dialect: Any, record: Any, cargs: list[Any], cparams: dict[str, Any]) -> Any:
    """SQLAlchemy's ``do_connect``: connect with asyncpg's arguments for the kind of endpoint.

    The first connection to an endpoint asks for the session setting; it is
    kept if the endpoint took it.
    """
    endpoint = tuple(cparams.get(k) for k in ("host", "port", "user", "database"))
    pooled = _answers.get(endpoint)
    if pooled is None:
        try:
            first = dialect.connect(*cargs, **cparams, server_settings=SESSION_SETTINGS)
        except Exception as exc:
            if _REFUSED not in str(exc):
                raise
            pooled = _answers[endpoint] = True
        else:
            try:
                behind = _behind_a_pooler(first)
            except BaseException:
                first.close()
                raise
            if not behind:
                _answers[endpoint] = False
                record.info[POOLED] = False
                return first
            first.close()
            pooled = _answers[endpoint] = True
    record.info[POOLED] = pooled
    if pooled:
        settings = {"statement_cache_size": 0, "prepared_statement_cache_size": 0}
        return dialect.connect(*cargs, **cparams, **settings, prepared_statement_name_func=_unnamed)
    return dialect.connect(*cargs, **cparams, server_settings=SESSION_SETTINGS)


def _behind_a_pooler(conn: Any) -> bool:
    """Whether the process id the connection was given at startup is another than that of the server
    process running its statements: a pooler's own, which took the session setting without passing it on."""
    raw = conn.driver_connection

    async def running() -> int:
        async with raw.transaction():  # one server connection for the whole statement, even through a pooler
            # Unnamed: a named statement would outlive this connection on the pooler's server connection,
            # where the next process's first statement (asyncpg's names restart in every process) would
            # collide with it.
            statement = await raw.prepare("SELECT pg_backend_pid()", name="")
            pid: int = await statement.fetchval()
            return pid

    return bool(await_(running()) != raw.get_server_pid())


def _unnamed() -> str:
    return ""


def is_pooled(info: dict[Any, Any]) -> bool:
    """Whether the connection with this ``info`` (the pool's, per connection) goes through a pooler."""
    return bool(info.get(POOLED))
