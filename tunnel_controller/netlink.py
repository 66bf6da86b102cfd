"""The tunnel-controller's only netlink code: tunnels, back-routes, events.

Thin async functions over pyroute2's ``AsyncIPRoute`` that return plain
values; tunnels go through ``bonding.links`` (shared with ``bonding setup``).
Back-routes carry our own ``rtm_protocol`` so a restarted daemon, and an
operator (``ip route show proto 119``), can tell them apart.
"""

from __future__ import annotations

import errno
import socket
import struct
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from ipaddress import IPv6Address, IPv6Interface, ip_network

from pyroute2 import AsyncIPRoute
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl import (
    RTM_DELLINK,
    RTM_DELROUTE,
    RTM_NEWLINK,
    RTM_NEWROUTE,
    RTMGRP_IPV4_ROUTE,
    RTMGRP_IPV6_ROUTE,
    RTMGRP_LINK,
)

from bonding import links
from bonding.plan import BOND_DEVICE, SHOOT_TUNNEL_NAME
from tunnel_controller.desired import IPNetwork, TunnelSpec

MAIN_TABLE = 254
RTN_UNICAST = 1
ARPHRD_TUNNEL6 = 769
IFF_UP = 0x1
RTM_F_CLONED = 0x200
HOST_PREFIX = {socket.AF_INET: 32, socket.AF_INET6: 128}


@dataclass(frozen=True)
class FoundTunnel:
    name: str
    index: int
    local: IPv6Address | None
    remote: IPv6Address | None
    matches: bool  # mode any, encaplimit none, local and remote as found
    up: bool


@dataclass(frozen=True)
class FoundRoute:
    dst: IPNetwork
    index: int
    proto: int


@dataclass(frozen=True)
class Found:
    tunnels: list[FoundTunnel]
    routes: list[FoundRoute]  # host routes in the main table through the tunnels found


class Kernel:
    def __init__(self, ipr: AsyncIPRoute, proto: int):
        self.ipr = ipr
        self.proto = proto

    async def bond_addresses(self) -> list[tuple[IPv6Interface, int]] | None:
        """(address, IFA flags) of bond0's global IPv6 addresses; None without bond0."""
        bond = await links.link_by_name(self.ipr, BOND_DEVICE)
        if bond is None:
            return None
        return await links.global_addresses(self.ipr, bond["index"])

    async def find(self) -> Found:
        """Every ``bond0ip6tnlXXXX`` ip6tnl device and the host routes through them."""
        tunnels = []
        async for link in await self.ipr.link("dump"):
            name = link.get("IFLA_IFNAME") or ""
            if not SHOOT_TUNNEL_NAME.match(name) or links.link_kind(link) != "ip6tnl":
                continue
            state = links.ip6tnl_state(link)
            matches = state["local"] is not None and links.ip6tnl_matches(link, state["local"], state["remote"])
            tunnels.append(FoundTunnel(name, link["index"], state["local"], state["remote"], matches, state["up"]))
        indexes = {tunnel.index for tunnel in tunnels}
        routes = []
        for family in (socket.AF_INET, socket.AF_INET6):
            async for msg in await self.ipr.route("dump", family=family):
                oif = msg.get("RTA_OIF")
                table = msg.get("RTA_TABLE", msg["table"])
                if (
                    oif in indexes
                    and not msg["flags"] & RTM_F_CLONED  # a cached exception (e.g. PMTU), not a route
                    and table == MAIN_TABLE
                    and msg["type"] == RTN_UNICAST
                    and msg["dst_len"] == HOST_PREFIX[family]
                    and msg.get("RTA_DST")
                ):
                    routes.append(FoundRoute(ip_network(msg.get("RTA_DST")), oif, msg["proto"]))
        return Found(tunnels, routes)

    async def ensure_tunnel(self, spec: TunnelSpec, *, expect_new: bool = False) -> tuple[int, str]:
        """(ifindex, "kept" | "created" | "replaced" | "adjusted").

        ``expect_new``: we know of no such device, so create it first and look only if the
        name is taken (one round trip less for each of a burst of new peers).
        """
        ensure = links.create_or_ensure_ip6tnl if expect_new else links.ensure_ip6tnl
        return await ensure(self.ipr, spec.name, spec.local, spec.remote)

    async def replace_route(self, dst: IPNetwork, index: int) -> None:
        await self.ipr.route("replace", dst=str(dst), oif=index, table=MAIN_TABLE, proto=self.proto)

    async def delete_route(self, dst: IPNetwork, index: int) -> bool:
        """Delete ``dst`` through ``index`` only (a route re-pointed elsewhere stays); False if absent."""
        try:
            await self.ipr.route("del", dst=str(dst), oif=index, table=MAIN_TABLE)
        except NetlinkError as exc:
            if exc.code in (errno.ESRCH, errno.ENOENT, errno.ENODEV):
                return False
            raise
        return True

    async def delete_tunnel(self, name: str) -> bool:
        return await links.delete_link(self.ipr, name)


# --- events -----------------------------------------------------------------


@dataclass(frozen=True)
class LinkGone:
    index: int
    name: str


@dataclass(frozen=True)
class LinkDown:
    index: int


@dataclass(frozen=True)
class RouteGone:
    dst: IPNetwork
    index: int


KernelEvent = LinkGone | LinkDown | RouteGone

_RTMSG = struct.Struct("BBBBBBBBI")  # family, dst_len, src_len, tos, table, protocol, scope, type, flags


class EventWatch:
    """Removals of our tunnels and back-routes, from rtnetlink multicast groups.

    Creating many tunnels makes the kernel announce every link, address and
    route change; parsing all of that with pyroute2 would cost more than the
    changes themselves. A parser hook looks at the fixed headers first and
    lets through only what can matter: ip6tnl links deleted, ip6tnl links
    down that ``watched(index)`` says are ours, host routes deleted from the
    main table.
    """

    def __init__(self, watched: Callable[[int], bool]):
        self.watched = watched
        self.ipr: AsyncIPRoute | None = None

    async def start(self) -> None:
        self.ipr = AsyncIPRoute()
        await self.ipr.bind(RTMGRP_LINK | RTMGRP_IPV4_ROUTE | RTMGRP_IPV6_ROUTE)
        marshal = self.ipr.marshal
        full_parse = marshal.parse_one_message

        def prefilter(data: bytes, offset: int, length: int):
            _, kind, flags, seq, _ = links.NLMSG_HEADER.unpack_from(data, offset)
            if kind in (RTM_NEWLINK, RTM_DELLINK):
                _, dev_type, index, if_flags, _ = links.IFINFOMSG.unpack_from(data, offset + 16)
                if dev_type != ARPHRD_TUNNEL6:
                    return None
                if kind == RTM_NEWLINK and (if_flags & IFF_UP or not self.watched(index)):
                    return None
            elif kind == RTM_DELROUTE:
                family, dst_len, _, _, table, _, _, route_type, _ = _RTMSG.unpack_from(data, offset + 16)
                if table != MAIN_TABLE or route_type != RTN_UNICAST or HOST_PREFIX.get(family) != dst_len:
                    return None
            elif kind == RTM_NEWROUTE:  # additions need no repair
                return None
            return full_parse(kind, flags, seq, data, offset, length)

        # Broadcasts carry sequence number 0; pyroute2 consults seq_map before its default parser.
        marshal.seq_map[0] = prefilter

    async def events(self) -> AsyncIterator[KernelEvent]:
        """Until ``close``; raises NetlinkError/OSError on overflow (events were lost)."""
        assert self.ipr is not None
        while True:
            async for msg in self.ipr.get():
                event = msg.get("event")
                if event == "RTM_DELLINK":
                    yield LinkGone(msg["index"], msg.get("IFLA_IFNAME") or "")
                elif event == "RTM_NEWLINK":
                    yield LinkDown(msg["index"])
                elif event == "RTM_DELROUTE" and msg.get("RTA_DST"):
                    yield RouteGone(ip_network(msg.get("RTA_DST")), msg.get("RTA_OIF"))

    def close(self) -> None:
        if self.ipr is not None:
            self.ipr.close()
            self.ipr = None
