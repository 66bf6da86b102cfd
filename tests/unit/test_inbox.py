"""daemonkit.inbox: one event at a time, or a tick when the core's wake-up comes first."""

import asyncio
import time

from daemonkit.inbox import Inbox


async def test_posted_events_come_out_in_order_before_any_tick():
    inbox: Inbox[str] = Inbox()
    inbox.post("a")
    inbox.post("b")
    assert [await inbox.next(10.0, lambda: "tick"), await inbox.next(10.0, lambda: "tick")] == ["a", "b"]


async def test_a_tick_when_nothing_comes_before_the_wakeup():
    inbox: Inbox[str] = Inbox()
    started = time.monotonic()
    assert await inbox.next(0.05, lambda: "tick") == "tick"
    assert 0.04 <= time.monotonic() - started < 2.0
    assert await inbox.next(0.0, lambda: "due") == "due"  # already due: at once


async def test_an_event_posted_while_waiting_ends_the_wait():
    inbox: Inbox[str] = Inbox()
    asyncio.get_running_loop().call_later(0.02, inbox.post, "event")
    started = time.monotonic()
    assert await inbox.next(30.0, lambda: "tick") == "event"
    assert time.monotonic() - started < 5.0
