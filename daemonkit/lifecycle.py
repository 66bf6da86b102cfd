"""Process lifecycle shared by the daemons: signals, exit codes, liveness.

``run(main)`` runs ``main(stop)`` in a fresh event loop; SIGTERM and SIGINT
set ``stop`` (Kubernetes sends SIGTERM; asyncio only handles SIGINT by
itself). ``main`` returns within a second of ``stop`` being set and leaves
kernel state as it is for the next instance. A second signal exits at once.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from collections.abc import Awaitable, Callable

LOG = logging.getLogger(__name__)


def run(main: Callable[[asyncio.Event], Awaitable[int | None]]) -> int:
    async def runner() -> int:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()

        def on_signal(signum: int) -> None:
            if stop.is_set():
                LOG.warning("second signal, exiting at once", extra={"signal": signal.Signals(signum).name})
                os._exit(1)
            LOG.info("stopping", extra={"signal": signal.Signals(signum).name})
            stop.set()

        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, on_signal, signum)
        try:
            return (await main(stop)) or 0
        finally:
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(signum)

    return asyncio.run(runner())


async def cancel_and_wait(tasks: list[asyncio.Task], timeout: float = 0.5) -> None:
    """Cancel ``tasks`` and give them ``timeout`` seconds to finish."""
    for task in tasks:
        task.cancel()
    if tasks:
        await asyncio.wait(tasks, timeout=timeout)


class Heartbeats:
    """Liveness of a daemon's loops: each loop beats; /healthz fails when one is stale."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self.clock = clock
        self._last: dict[str, float] = {}
        self._allowed: dict[str, float] = {}

    def register(self, name: str, allowed_gap: float) -> None:
        self._allowed[name] = allowed_gap
        self._last[name] = self.clock()

    def beat(self, name: str) -> None:
        self._last[name] = self.clock()

    def check(self) -> tuple[bool, str]:
        now = self.clock()
        stale = [
            f"{name} last ran {now - self._last[name]:.1f} s ago (allowed {allowed:.1f} s)"
            for name, allowed in self._allowed.items()
            if now - self._last[name] > allowed
        ]
        return (False, "; ".join(stale)) if stale else (True, "ok")
