"""What the tunnel-controller asks of the netlink adapter: its tunnels and
back-routes, and the kernel events that can break them.

Back-routes carry our own ``rtm_protocol`` so a restarted daemon, and an
operator (``ip route show proto 119``), can tell them apart.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from ipaddress import IPv6Address, IPv6Interface

from bonding.plan import BOND_DEVICE, SHOOT_TUNNEL_NAME
from netlink_adapter import AsyncIPRoute
from netlink_adapter.addresses import global_addresses
from netlink_adapter.events import EventStream
from netlink_adapter.headers import Header, LinkHeader
from netlink_adapter.ip6tnl import ARPHRD_TUNNEL6, create_or_ensure_ip6tnl, dump_ip6tnl, ensure_ip6tnl
from netlink_adapter.links import Ensured, delete_link, link_index
from netlink_adapter.routes import RT_TABLE_MAIN, RTN_UNICAST, delete_route, dump_routes, replace_route
from tunnel_controller.desired import IPNetwork, TunnelSpec


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
        index = await link_index(self.ipr, BOND_DEVICE)
        if index is None:
            return None
        return await global_addresses(self.ipr, index)

    async def find(self) -> Found:
        """Every ``bond0ip6tnlXXXX`` ip6tnl device and the host routes through them."""
        tunnels = [
            FoundTunnel(t.name, t.index, t.local, t.remote, t.local is not None and t.standard, t.up)
            for t in await dump_ip6tnl(self.ipr)
            if SHOOT_TUNNEL_NAME.match(t.name or "")
        ]
        indexes = {tunnel.index for tunnel in tunnels}
        routes = [
            FoundRoute(route.dst, route.oif, route.proto)
            for route in await dump_routes(self.ipr, RT_TABLE_MAIN)
            if route.oif in indexes and route.type == RTN_UNICAST and route.is_host
        ]
        return Found(tunnels, routes)

    async def ensure_tunnel(self, spec: TunnelSpec, *, expect_new: bool = False) -> tuple[int, Ensured]:
        """``expect_new``: we know of no such device, so create it first and look only if the
        name is taken (one round trip less for each of a burst of new peers)."""
        ensure = create_or_ensure_ip6tnl if expect_new else ensure_ip6tnl
        return await ensure(self.ipr, spec.name, spec.local, spec.remote)

    async def replace_route(self, dst: IPNetwork, index: int) -> None:
        await replace_route(self.ipr, dst, index, proto=self.proto)

    async def delete_route(self, dst: IPNetwork, index: int) -> bool:
        """Delete ``dst`` through ``index`` only (a route re-pointed elsewhere stays); False if absent."""
        return await delete_route(self.ipr, dst, oif=index)

    async def delete_tunnel(self, name: str) -> bool:
        return await delete_link(self.ipr, name)


def may_break_tunnels(watched: Callable[[int], bool]) -> Callable[[Header], bool]:
    """The events worth decoding: ip6tnl links deleted, ip6tnl links down that
    ``watched(index)`` says are ours, host routes deleted from the main table
    (additions need no repair)."""

    def wanted(header: Header) -> bool:
        if isinstance(header, LinkHeader):
            if header.device_type != ARPHRD_TUNNEL6:
                return False
            return header.deleted or (not header.up and watched(header.index))
        return (
            header.deleted
            and header.table == RT_TABLE_MAIN
            and header.type == RTN_UNICAST
            and header.is_host
        )

    return wanted


def event_stream(watched: Callable[[int], bool]) -> EventStream:
    return EventStream(may_break_tunnels(watched))
