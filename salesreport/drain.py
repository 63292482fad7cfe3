"""SIGTERM drains a worker before the server stops it, with public APIs only.

Granian stops a worker on SIGTERM and closes its idle keep-alive connections
at once: a request a client sends on one just then would get no answer. So on
SIGTERM the worker first drains for ``settings.drain_seconds`` (``draining``
is set: see ``front.Front``), and only then lets Granian stop it.

How, without asyncio's private table of signal handlers: a Granian 2.8 worker
registers one handler, on its event loop, for SIGINT and for SIGTERM
(``granian/_signals.py``, ``set_loop_signals``: lines 7-8 and 28-31;
called for the ASGI worker in ``granian/server/mp.py`` line 210, before the
app's lifespan starts at line 224). So ``install`` replaces the SIGTERM one
with ``loop.add_signal_handler`` and, when the drain is over, raises SIGINT in
its own process: that runs Granian's handler, the very function SIGTERM would
have run. SIGINT itself (Ctrl-C) still stops the worker at once, as before.
What ``signal.getsignal`` returns for the two signals is the loop's own
dispatcher: asyncio's loop gives the same function for both, uvloop (which
``serve`` runs) a new bound method each time, equal but not the same object;
so the two are compared with ``==``.

Nothing public hands out Granian's handler or its shutdown event: the event is
a local of the worker function (``mp.py`` lines 210-222); ``on_shutdown``
hooks run in the main process after the workers have stopped
(``granian/server/common.py`` lines 515-517); ``workers_kill_timeout`` is only
how long the main process waits before SIGKILL (lines 381-399); the lifespan's
shutdown runs after the server has closed (``mp.py`` lines 248-250). Draining
in the main process instead would also miss a SIGTERM sent to every process of
the service at once (systemd's default ``KillMode=control-group``).

Where a server does not handle SIGINT as it handles SIGTERM, the worker says so
in a warning at start-up and SIGTERM stops it without a drain. Where nothing
handles SIGTERM (the app run in-process, in tests) nothing changes.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable
from typing import Protocol

import structlog

log = structlog.get_logger("salesreport.drain")


class _Settings(Protocol):
    @property
    def drain_seconds(self) -> float: ...


class Drainable(Protocol):
    draining: bool

    @property
    def settings(self) -> _Settings: ...

    def wake(self) -> None:
        """Wake the requests that wait for news: they answer now, and their connections close."""


def _stop() -> None:
    """Run the server's own stop handler: the one it registered for SIGINT, and for SIGTERM too."""
    signal.raise_signal(signal.SIGINT)


def install(svc: Drainable) -> Callable[[], None]:
    """Make SIGTERM drain for ``svc.settings.drain_seconds`` before the server stops.

    Call it from the app's lifespan, on the server's event loop. Returns
    ``restore``, for the end of the lifespan: SIGTERM then stops at once again.
    """
    term = signal.getsignal(signal.SIGTERM)
    if not callable(term):
        return lambda: None  # nothing stops on SIGTERM but the default: not under a server
    if term != signal.getsignal(signal.SIGINT):
        log.warning(
            "SIGTERM will stop this worker without a drain: the server does not handle SIGINT as it handles "
            "SIGTERM (Granian 2.8 does)",
            sigterm=repr(term),
            sigint=repr(signal.getsignal(signal.SIGINT)),
        )
        return lambda: None
    loop = asyncio.get_running_loop()
    stopping: asyncio.TimerHandle | None = None

    def on_sigterm() -> None:
        nonlocal stopping
        if not svc.draining:
            svc.draining = True
            svc.wake()
            log.info("draining before shutdown", seconds=svc.settings.drain_seconds)
            stopping = loop.call_later(svc.settings.drain_seconds, _stop)

    def restore() -> None:
        if stopping is not None:
            stopping.cancel()
        loop.add_signal_handler(signal.SIGTERM, _stop)

    try:
        loop.add_signal_handler(signal.SIGTERM, on_sigterm)
    except (NotImplementedError, RuntimeError, ValueError) as exc:  # no loop signals here (Windows, a thread)
        log.warning("SIGTERM will stop this worker without a drain", error=str(exc))
        return lambda: None
    return restore
