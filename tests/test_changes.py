"""How a worker learns of changes on SQLite: the counters, looked at once per turn of the event loop."""

from __future__ import annotations

import asyncio
import sqlite3

import pytest
import sqlalchemy as sa

from salesreport import config, db
from salesreport.changes import SQLITE_REUSE, Changes

pytestmark = pytest.mark.anyio

BUMP = "INSERT INTO versions (name, version) VALUES (?, 1) ON CONFLICT (name) DO UPDATE SET version = version + 1"


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_another_process_counts_from_the_next_turn_and_this_workers_batches_at_once(
    settings: config.Settings,
) -> None:
    database = db.connect(settings)
    changes = Changes(database)
    changes.start()
    other = sqlite3.connect(sa.engine.make_url(settings.database_url).database or "", isolation_level=None)
    try:
        before = await changes.stamp()
        assert before is not None
        other.execute(BUMP, ("catalog",))  # an import, by the command line
        await asyncio.sleep(0)  # the next turn of the loop
        after = await changes.stamp()
        assert after is not None and after[1] == before[1] + 1
        assert changes.stale("catalog", after[1] - 1)

        other.execute(BUMP, (f"{db.DATA}:0",))  # what this worker's writer commits with a batch
        changes.committed()  # in the same turn: the batch counts at once, and once
        mine = await changes.stamp()
        assert mine is not None and mine[0] == after[0] + 1 and mine[2] == after[2] + 1
        await asyncio.sleep(0)
        assert await changes.stamp() == mine
    finally:
        other.close()
        await changes.close()
        await database.dispose()


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_a_long_turn_looks_again(settings: config.Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """One look serves the requests of a turn of the event loop, but not for longer than ``SQLITE_REUSE``:
    in a turn that takes long (a callback that computes), a change committed meanwhile counts."""
    database = db.connect(settings)
    changes = Changes(database)
    other = sqlite3.connect(sa.engine.make_url(settings.database_url).database or "", isolation_level=None)
    loop = asyncio.get_running_loop()
    now = [loop.time()]
    monkeypatch.setattr(loop, "time", lambda: now[0])
    changes.start()
    try:
        before = await changes.stamp()
        assert before is not None
        other.execute(BUMP, ("catalog",))
        assert await changes.stamp() == before  # the same turn, a moment later: the same look
        now[0] += 2 * SQLITE_REUSE  # past the bound: at it exactly, (t + 0.005) - t may round below 0.005
        after = await changes.stamp()
        assert after is not None and after[1] == before[1] + 1
    finally:
        other.close()
        await changes.close()
        await database.dispose()
