"""One dump at a time per netlink socket.

The kernel runs one dump per socket: ``netlink_dump_start`` answers EBUSY to a
second while the first is still being read. The daemons share one
``AsyncIPRoute`` between their loops, so at start-up a route read and the
announcer's address lookup collided and one failed with EBUSY. Every dump
of the adapter goes through ``dump``; other requests need no turn.
"""

from __future__ import annotations

import asyncio
import weakref

from pyroute2 import AsyncIPRoute

_turns: weakref.WeakKeyDictionary[AsyncIPRoute, asyncio.Lock] = weakref.WeakKeyDictionary()


async def dump(ipr: AsyncIPRoute, kind: str, **filters) -> list:
    """Every message of ``ipr.<kind>("dump", **filters)``, read to the end before the next dump starts."""
    turn = _turns.get(ipr)
    if turn is None:
        turn = _turns[ipr] = asyncio.Lock()
    async with turn:
        return [msg async for msg in await getattr(ipr, kind)("dump", **filters)]
