"""One typed stream of link and route events from rtnetlink multicast groups.

Creating many tunnels makes the kernel announce every link, address and
route change; parsing all of that with pyroute2 would cost more than the
changes themselves. A parser hook reads the fixed header of each message
first (``headers.LinkHeader`` / ``RouteHeader``) and decodes only what the
caller's ``wanted`` predicate lets through; cached route exceptions never
pass. Decoded messages come out as ``LinkEvent`` / ``RouteEvent``.

When the kernel drops events because the socket's buffer is full, reading
raises ``EventsLost``: the caller should read the whole state again.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from pyroute2 import AsyncIPRoute
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl import RTMGRP_IPV4_ROUTE, RTMGRP_IPV6_ROUTE, RTMGRP_LINK
from pyroute2.netlink.rtnl.marshal import MarshalRtnl

from netlink_adapter.errors import event_socket_error, raise_domain_error
from netlink_adapter.headers import Header, RouteHeader, nlmsg_header, parse_header
from netlink_adapter.links import LinkFacts, link_facts
from netlink_adapter.routes import RTM_F_CLONED, RouteFacts, route_facts

DEFAULT_RCVBUF = 1 << 20  # pyroute2's default
_LINK_EVENTS = {"RTM_NEWLINK": False, "RTM_DELLINK": True}  # event -> deleted
_ROUTE_EVENTS = {"RTM_NEWROUTE": False, "RTM_DELROUTE": True}


@dataclass(frozen=True)
class LinkEvent:
    link: LinkFacts
    deleted: bool  # RTM_DELLINK; otherwise RTM_NEWLINK (created or changed)


@dataclass(frozen=True)
class RouteEvent:
    route: RouteFacts
    deleted: bool  # RTM_DELROUTE; otherwise RTM_NEWROUTE (added or replaced)


Event = LinkEvent | RouteEvent


def everything(header: Header) -> bool:
    return True


class EventStream:
    """``async with EventStream(wanted) as stream: async for event in stream: ...``

    ``wanted(header)`` decides from the fixed header alone whether a link or
    route message is worth decoding. ``links`` / ``ipv4_routes`` /
    ``ipv6_routes`` choose the multicast groups; ``netns`` another namespace;
    ``rcvbuf`` the socket's receive buffer (what may queue up unread).
    """

    def __init__(
        self,
        wanted: Callable[[Header], bool] = everything,
        *,
        links: bool = True,
        ipv4_routes: bool = True,
        ipv6_routes: bool = True,
        netns: str | None = None,
        rcvbuf: int = DEFAULT_RCVBUF,
    ):
        self.wanted = wanted
        self.groups = (
            (RTMGRP_LINK if links else 0)
            | (RTMGRP_IPV4_ROUTE if ipv4_routes else 0)
            | (RTMGRP_IPV6_ROUTE if ipv6_routes else 0)
        )
        self.netns = netns
        self.rcvbuf = rcvbuf
        self.ipr: AsyncIPRoute | None = None

    async def start(self) -> None:
        """Subscribe; events from here on are delivered."""
        self.ipr = AsyncIPRoute(rcvbuf=self.rcvbuf, **({"netns": self.netns} if self.netns else {}))
        marshal = PrefilteringMarshal()
        marshal.hook = prefilter(self.wanted, marshal.parse_one_message)
        self.ipr.set_marshal(marshal)
        try:
            await self.ipr.bind(groups=self.groups)
        except NetlinkError as exc:
            self.close()
            raise_domain_error(exc)
        except BaseException:
            self.close()
            raise

    async def events(self) -> AsyncIterator[Event]:
        """Until ``close``; raises ``EventsLost`` on overflow, another ``KERNEL_ERRORS`` on failure."""
        assert self.ipr is not None, "start() first"
        try:
            while True:
                async for msg in self.ipr.get():
                    event = typed_event(msg)
                    if event is not None:
                        yield event
        except (NetlinkError, OSError) as exc:
            raise_domain_error(exc, event_socket_error(exc))

    def __aiter__(self) -> AsyncIterator[Event]:
        return self.events()

    async def __aenter__(self) -> EventStream:
        await self.start()
        return self

    async def __aexit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self.ipr is not None:
            self.ipr.close()
            self.ipr = None


class PrefilteringMarshal(MarshalRtnl):
    """pyroute2's rtnetlink marshal with one parser hook for every message.

    Not ``seq_map[0]``: a notification carries the sequence number of the
    request that caused it (``ip``'s, a daemon's own), 0 only for what the
    kernel changes by itself; this socket sends no requests of its own.
    """

    hook = None

    def get_parser(self, key, flags, sequence_number):
        return self.hook


def prefilter(wanted: Callable[[Header], bool], full_parse):
    """A pyroute2 parser hook: None (skipped) for link and route messages ``wanted`` rejects
    and for cached route exceptions, ``full_parse`` for everything else (errors included)."""

    def parse(data: bytes, offset: int, length: int):
        header = nlmsg_header(data, offset)
        fixed = parse_header(header.type, data, offset)
        if fixed is not None:
            if isinstance(fixed, RouteHeader) and fixed.flags & RTM_F_CLONED:
                return None
            if not wanted(fixed):
                return None
        return full_parse(header.type, header.flags, header.sequence, data, offset, length)

    return parse


def typed_event(msg) -> Event | None:
    """A decoded multicast message as a typed event; None for anything else."""
    kind = msg.get("event")
    if kind in _LINK_EVENTS:
        link = link_facts(msg)
        return None if link is None else LinkEvent(link, _LINK_EVENTS[kind])
    if kind in _ROUTE_EVENTS:
        route = route_facts(msg)
        return None if route is None else RouteEvent(route, _ROUTE_EVENTS[kind])
    return None
