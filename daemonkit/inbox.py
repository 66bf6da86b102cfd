"""The event inbox of a decision loop: events posted from callbacks and other loops,
taken one at a time; when none comes before the core's next wake-up, a tick.

Both daemons' runners (and server steering's) feed their pure cores this way:
one consumer, so the core never sees two events at once.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar

E = TypeVar("E")


class Inbox(Generic[E]):
    def __init__(self) -> None:
        self._events: deque[E] = deque()
        self._wake = asyncio.Event()

    def post(self, event: E) -> None:
        self._events.append(event)
        self._wake.set()

    async def next(self, wakeup_in: float, tick: Callable[[], E]) -> E:
        """The next posted event, or ``tick()`` once ``wakeup_in`` seconds passed without one."""
        if not self._events:
            self._wake.clear()
            if wakeup_in > 0:
                handle = asyncio.get_running_loop().call_later(wakeup_in, self._wake.set)
                try:
                    await self._wake.wait()
                finally:
                    handle.cancel()
        return self._events.popleft() if self._events else tick()
