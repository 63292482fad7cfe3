"""A timeout for the many short waits of requests (a body arriving), with one timer per event loop.

``asyncio.timeout`` arms a timer of the event loop for each wait and disarms it when the wait
ends: about 5 µs per request on uvloop (BENCHMARKS.md, "Notes"), for a timer that almost never
fires. Here a wait is entered in its loop's table of waits, and a timer armed at the earliest
deadline cancels the waits whose time has passed, then is armed again at the earliest of the rest;
a wait that ends in time is struck from the table. Under steady traffic every new deadline is
later than the timer's, so a request costs two operations on a dict and the timer fires about
once per timeout.

A wait whose time passed ends as with ``asyncio.timeout``: its task is cancelled, and the
cancellation comes out of the ``with`` block as ``TimeoutError``, unless the task was also
cancelled from elsewhere meanwhile.
"""

from __future__ import annotations

import asyncio
import math
import weakref
from types import TracebackType


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
        self._task = task
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
        self._table.waits.pop(self, None)
        if self.expired and self._task.uncancel() <= self._cancelling and kind is asyncio.CancelledError:
            raise TimeoutError from exc

    def _expire(self) -> None:
        self.expired = True
        self._task.cancel()


class _Table:
    """A loop's waits, in the order they began, and when its timer fires next.

    A timer is never cancelled: one armed earlier than the next (a shorter timeout) just fires
    first, and a timer that finds nothing late arms none unless nothing is armed before the
    earliest deadline left. The table holds no reference to its loop (the loop's timers hold it).
    """

    def __init__(self) -> None:
        self.waits: dict[within, None] = {}
        self._timer_at = math.inf

    def add(self, wait: within, loop: asyncio.AbstractEventLoop) -> None:
        self.waits[wait] = None
        if wait.deadline < self._timer_at:
            self._arm(wait.deadline, loop)

    def _arm(self, when: float, loop: asyncio.AbstractEventLoop) -> None:
        self._timer_at = when
        loop.call_at(when, self._fire, when, loop)

    def _fire(self, when: float, loop: asyncio.AbstractEventLoop) -> None:
        if when == self._timer_at:
            self._timer_at = math.inf
        now = loop.time()
        late = [wait for wait in self.waits if wait.deadline <= now]
        for wait in late:
            del self.waits[wait]
            wait._expire()
        if self.waits:
            earliest = min(wait.deadline for wait in self.waits)
            if earliest < self._timer_at:
                self._arm(earliest, loop)


# By event loop: a loop that is dropped takes its table (and its waits) with it.
_tables: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Table] = weakref.WeakKeyDictionary()
