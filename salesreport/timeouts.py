"""A timeout for the many short waits of requests (a body arriving), with one timer per event loop.

``asyncio.timeout`` arms a timer of the event loop for each wait and disarms it when the wait
ends: about 5 µs per request on uvloop (BENCHMARKS.md, "Notes"), for a timer that almost never
fires. Here a wait is entered in its loop's table of waits, and a timer armed at the earliest
deadline cancels the waits whose time has passed, then is armed again at the earliest of the rest;
a wait that ends in time is struck from the table. Under steady traffic every new deadline is
later than the timer's, so a request costs two operations on a dict, and the timer fires about
once per timeout. Waits are kept by their length in the order they began, so by deadline: a
firing looks at the late waits and at the first that is not, however many wait.

A wait whose time passed ends as with ``asyncio.timeout``: its task is cancelled, and the
cancellation comes out of the ``with`` block as ``TimeoutError``, unless the task was also
cancelled from elsewhere meanwhile. It may end up to a millisecond early: uvloop's timers count
whole milliseconds, and fire up to one early.
"""

from __future__ import annotations

import asyncio
import math
import weakref
from types import TracebackType

# A wait this close to its deadline counts as late (uvloop's timers may fire up to 1 ms early).
SLACK = 0.001


class within:
    """``with within(seconds):`` (in a task): a ``TimeoutError`` if the block takes longer."""

    __slots__ = ("_cancelling", "_table", "_task", "deadline", "expired", "seconds")

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.deadline = math.inf
        self.expired = False

    def __enter__(self) -> within:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task(loop)
        if task is None:
            raise RuntimeError("within() must be used inside a task")
        # Weakly: a loop closed while a wait is pending is not kept alive by its table.
        self._task = weakref.ref(task)
        self._cancelling = task.cancelling()
        self.deadline = loop.time() + self.seconds
        table = _tables.get(loop)
        if table is None:
            table = _tables[loop] = _Table()
        self._table = table
        table.add(self, loop)
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self._table.discard(self)
        task = self._task()
        # As asyncio.timeout: the expiry's cancel is taken back whatever ended the block.
        expired = self.expired and task is not None and task.uncancel() <= self._cancelling
        if expired and kind is asyncio.CancelledError:
            raise TimeoutError from exc

    def _expire(self) -> None:
        self.expired = True
        task = self._task()
        if task is not None:
            task.cancel()


class _Table:
    """A loop's waits, by their length in seconds, each length's in the order they began (so by
    deadline), and when its timer fires next.

    A timer is never cancelled: one armed earlier than the next (a shorter timeout) just fires
    first, and a timer that finds nothing late arms none unless nothing is armed before the
    earliest deadline left. Nothing in the table refers to its loop (the loop's timers refer to it).
    """

    def __init__(self) -> None:
        self.waits: dict[float, dict[within, None]] = {}
        self._timer_at = math.inf

    def add(self, wait: within, loop: asyncio.AbstractEventLoop) -> None:
        same = self.waits.get(wait.seconds)
        if same is None:
            same = self.waits[wait.seconds] = {}
        same[wait] = None
        if wait.deadline < self._timer_at:
            self._arm(wait.deadline, loop)

    def discard(self, wait: within) -> None:
        same = self.waits.get(wait.seconds)
        if same is not None and wait in same:
            del same[wait]
            if not same:
                del self.waits[wait.seconds]

    def pending(self) -> int:
        return sum(map(len, self.waits.values()))

    def _arm(self, when: float, loop: asyncio.AbstractEventLoop) -> None:
        self._timer_at = when
        loop.call_at(when, self._fire, when, loop)

    def _fire(self, when: float, loop: asyncio.AbstractEventLoop) -> None:
        if when == self._timer_at:
            self._timer_at = math.inf
        late_after = loop.time() + SLACK
        late: list[within] = []
        earliest = math.inf
        for same in self.waits.values():
            for wait in same:
                if wait.deadline > late_after:
                    earliest = min(earliest, wait.deadline)
                    break
                late.append(wait)
        for wait in late:
            self.discard(wait)
            wait._expire()
        if earliest < self._timer_at:
            self._arm(earliest, loop)


# By event loop: a loop that is dropped takes its table with it.
_tables: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Table] = weakref.WeakKeyDictionary()
