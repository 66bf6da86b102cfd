"""What the path-controller asks of the netlink adapter: tunnels, routes, bond address, events."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable
from ipaddress import IPv6Address

from bonding.plan import BOND_DEVICE, seed_tunnel_name
from netlink_adapter import AsyncIPRoute
from netlink_adapter.addresses import global_addresses
from netlink_adapter.events import EventStream, LinkEvent
from netlink_adapter.ip6tnl import ensure_ip6tnl
from netlink_adapter.links import Ensured, LinkFacts, dump_links, link_index
from netlink_adapter.routes import RT_TABLE_MAIN, delete_route, dump_routes, replace_route
from path_controller.core import LinkChanged, RouteChanged
from path_controller.routes import IPNetwork, Route


class Kernel:
    def __init__(self, ipr: AsyncIPRoute, protocol: int):
        self.ipr = ipr
        self.protocol = protocol

    async def tunnel_indexes(self, count: int) -> dict[int, int]:
        """ifindex of ``bond0-ip6tnl<j>`` for each j that exists."""
        result = {}
        for j in range(count):
            index = await link_index(self.ipr, seed_tunnel_name(j))
            if index is not None:
                result[j] = index
        return result

    async def bond_address(self) -> IPv6Address | None:
        index = await link_index(self.ipr, BOND_DEVICE)
        if index is None:
            return None
        addresses = await global_addresses(self.ipr, index)
        return addresses[0][0].ip if addresses else None

    async def tunnel(self, j: int, remote: IPv6Address) -> tuple[int, Ensured]:
        """``bond0-ip6tnl<j>`` from our bond address to ``remote``, recreated if it vanished or went down."""
        local = await self.bond_address()
        if local is None:
            raise LookupError("bond0 has no address")
        return await ensure_ip6tnl(self.ipr, seed_tunnel_name(j), local, remote)

    async def links(self) -> list[LinkFacts]:
        return await dump_links(self.ipr)

    async def routes(self, networks: Iterable[IPNetwork]) -> dict[IPNetwork, Route]:
        """Main-table routes for ``networks`` plus every route carrying our protocol."""
        wanted = set(networks)
        return {
            route.dst: Route(route.oif, route.proto)
            for route in await dump_routes(self.ipr)
            if route.dst in wanted or route.proto == self.protocol
        }

    async def replace(self, network: IPNetwork, oif: int) -> None:
        await replace_route(self.ipr, network, oif, proto=self.protocol)

    async def remove(self, network: IPNetwork) -> None:
        await delete_route(self.ipr, network, proto=self.protocol)


async def kernel_events(clock: Callable[[], float], netns: str | None = None) -> AsyncIterator[LinkChanged | RouteChanged]:
    """Every route and link change (ours included) as the core's events, until cancelled."""
    async with EventStream(netns=netns) as stream:
        async for event in stream:
            if isinstance(event, LinkEvent):
                yield LinkChanged(clock(), event.link, removed=event.deleted)
            elif event.route.table == RT_TABLE_MAIN:  # pinning's per-vpn-shoot tables are not the core's
                route = event.route
                yield RouteChanged(clock(), route.dst, route.oif, route.proto, removed=event.deleted)
