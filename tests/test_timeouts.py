"""``timeouts.within``: the requests' timeout with one timer per event loop.

A wait that can only end by its timeout waits on an event that is never set, so each outcome
is decided by the timeout alone (the timeouts are short, and nothing here reads a clock).
"""

from __future__ import annotations

import asyncio
import gc
import weakref

import pytest
import uvloop

from salesreport import timeouts
from salesreport.timeouts import within

pytestmark = pytest.mark.anyio


def _table() -> timeouts._Table:
    return timeouts._tables[asyncio.get_running_loop()]


async def test_a_wait_that_ends_in_time_leaves_nothing_behind() -> None:
    done = asyncio.Event()
    done.set()
    with within(60) as wait:
        await done.wait()
    assert not wait.expired
    assert _table().pending() == 0
    await asyncio.sleep(0)  # no cancellation was left pending on the task
    task = asyncio.current_task()
    assert task is not None and task.cancelling() == 0


async def test_a_wait_past_its_time_raises_timeout_error() -> None:
    with pytest.raises(TimeoutError), within(0.05) as wait:
        await asyncio.Event().wait()
    assert wait.expired
    assert _table().pending() == 0
    task = asyncio.current_task()
    assert task is not None and task.cancelling() == 0


async def test_a_shorter_wait_begun_later_ends_first() -> None:
    async def wait(seconds: float) -> str:
        try:
            with within(seconds):
                await asyncio.Event().wait()
        except TimeoutError:
            return "timed out"
        raise AssertionError("unreachable")

    long = asyncio.create_task(wait(60))
    await asyncio.sleep(0)  # the long wait is in the table, and the timer armed at its deadline
    assert await wait(0.05) == "timed out"
    assert not long.done()
    long.cancel()
    with pytest.raises(asyncio.CancelledError):
        await long
    assert _table().pending() == 0


async def test_waits_in_a_row_arm_one_timer() -> None:
    with within(60):
        pass
    armed = list(_table()._armed)
    done = asyncio.Event()
    done.set()
    for _ in range(100):
        with within(60):
            await done.wait()
    assert _table()._armed == armed  # every later deadline is after the armed one: no new timer


async def test_a_cancellation_from_elsewhere_is_not_taken_for_the_timeout() -> None:
    started = asyncio.Event()

    async def wait() -> None:
        with within(60):
            started.set()
            await asyncio.Event().wait()

    task = asyncio.create_task(wait())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_timeout_and_a_cancellation_together_stay_a_cancellation() -> None:
    # As with asyncio.timeout: the task was also cancelled by someone else, who must see it.
    started = asyncio.Event()

    async def wait() -> None:
        with within(60) as waiting:
            started.set()
            try:
                await asyncio.Event().wait()
            finally:
                assert waiting.expired

    task = asyncio.create_task(wait())
    await started.wait()
    (wait_in_table,) = (wait for same in _table().waits.values() for wait in same)
    wait_in_table._expire()  # its time passes...
    task.cancel()  # ...and the task is cancelled from elsewhere in the same turn
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_outside_a_task_it_refuses() -> None:
    loop = asyncio.get_running_loop()
    refused: asyncio.Future[BaseException] = loop.create_future()

    def enter() -> None:  # a callback of the loop runs outside every task
        try:
            within(1).__enter__()
        except RuntimeError as exc:
            refused.set_result(exc)

    loop.call_soon(enter)
    assert "inside a task" in str(await refused)


def test_a_loop_closed_with_a_wait_pending_is_not_kept_alive() -> None:
    loop = asyncio.new_event_loop()
    started = asyncio.Event()

    async def stall() -> None:
        with within(60):
            started.set()
            await asyncio.Event().wait()

    task = loop.create_task(stall())
    loop.run_until_complete(started.wait())
    loop.close()  # a test's or an embedded loop, ended while a body was awaited
    gone = weakref.ref(loop)
    del loop, task
    gc.collect()
    assert gone() is None


@pytest.mark.parametrize("seconds", [0.0101, 0.0333])
def test_a_timer_that_fires_early_does_not_spin(monkeypatch: pytest.MonkeyPatch, seconds: float) -> None:
    # uvloop counts whole milliseconds: its timer may fire before loop.time() reaches the deadline.
    fired = []
    fire = timeouts._Table._fire

    def counted(self: timeouts._Table, when: float, loop: asyncio.AbstractEventLoop) -> None:
        fired.append(when)
        fire(self, when, loop)

    monkeypatch.setattr(timeouts._Table, "_fire", counted)

    async def wait() -> bool:
        try:
            with within(seconds):
                await asyncio.Event().wait()
        except TimeoutError:
            return True
        return False

    assert uvloop.run(wait())
    assert len(fired) <= 2


async def test_waits_of_two_lengths_in_turn_do_not_pile_timers_up() -> None:
    done = asyncio.Event()
    done.set()
    for _ in range(50):
        with within(60):
            await done.wait()
        with pytest.raises(TimeoutError), within(0.001):
            await asyncio.Event().wait()
    # The long waits' first timer is still armed: none was armed for the later ones.
    assert len(_table()._armed) <= 2
    assert _table().pending() == 0


async def test_a_wait_is_entered_once() -> None:
    wait = within(60)
    with wait:
        pass
    with pytest.raises(RuntimeError, match="once"), wait:
        pass
