"""A timeout for the many short waits of requests (a body arriving), with one timer per event loop.

``asyncio.timeout`` arms a timer of the event loop for each wait and disarms it when the wait ends:
about 5 µs per request on uvloop (BENCHMARKS.md, "Notes"), for a timer that almost never fires.
Here a wait is entered in its loop's table of waits, and a timer armed at the earliest deadline
cancels the waits whose time has passed, then is armed again at the earliest of the rest; a wait
that ends in time is struck from the table. Under steady traffic every new deadline is later than
the armed timer's, so a request costs an insertion and a deletion (1.6 µs with the rest, against
about 5), and the timer fires about once per timeout. Waits are kept by their length in the order
they began, so by deadline: a firing looks at the late waits and at the first that is not, however
many wait.

A wait whose time passed ends as with ``asyncio.timeout``: its task is cancelled, and the
cancellation comes out of the ``with`` block as ``TimeoutError``, unless the task was also
cancelled from elsewhere meanwhile. It may end up to a millisecond early: uvloop's timers count
whole milliseconds, and fire up to one early.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
import weakref
from collections import OrderedDict
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
        if self.deadline != math.inf:
            raise RuntimeError("a within() can be entered once")
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
    deadline), and the times its timers are armed at.

    A timer is never cancelled: one armed earlier than the next (a shorter timeout) just fires
    first. A timer is armed only for a deadline earlier than every armed one, so waits of mixed
    lengths do not pile timers up. Each length's waits are an ``OrderedDict``: its first entry is
    found at once however many were struck before it (a dict would step over their empty slots).
    Nothing in the table refers to its loop (the loop's timers refer to the table).
    """

    def __init__(self) -> None:
        self.waits: dict[float, OrderedDict[within, None]] = {}
        self._armed: list[float] = []  # a heap

    def add(self, wait: within, loop: asyncio.AbstractEventLoop) -> None:
        same = self.waits.get(wait.seconds)
        if same is None:
            same = self.waits[wait.seconds] = OrderedDict()
        same[wait] = None
        if not self._armed or wait.deadline < self._armed[0]:
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
        heapq.heappush(self._armed, when)
        loop.call_at(when, self._fire, when, loop)

    def _fire(self, when: float, loop: asyncio.AbstractEventLoop) -> None:
        self._armed.remove(when)  # mostly the first: timers fire in order
        heapq.heapify(self._armed)
        late_after = loop.time() + SLACK
        late = [
            wait
            for same in self.waits.values()
            for wait in itertools.takewhile(lambda wait: wait.deadline <= late_after, same)
        ]
        try:
            for wait in late:
                self.discard(wait)
                wait._expire()
        finally:
            # Each length's first wait is its earliest (one that could not be expired included).
            earliest = min((next(iter(same)).deadline for same in self.waits.values()), default=math.inf)
            if earliest < (self._armed[0] if self._armed else math.inf):
                self._arm(earliest, loop)


# By event loop: a loop that is dropped takes its table with it.
_tables: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Table] = weakref.WeakKeyDictionary()
