"""The path-controller's only contact with netlink: tunnels, routes, bond address, events."""

from __future__ import annotations

import errno
import socket
from collections.abc import AsyncIterator, Iterable
from ipaddress import IPv6Address, ip_network

from pyroute2 import AsyncIPRoute
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl import RTMGRP_IPV4_ROUTE, RTMGRP_IPV6_ROUTE, RTMGRP_LINK

from bonding import links
from bonding.plan import BOND_DEVICE, seed_tunnel_name
from path_controller.bondwatch import LinkFacts
from path_controller.core import LinkChanged, RouteChanged
from path_controller.routes import IPNetwork, Route

MAIN_TABLE = 254


class Kernel:
    def __init__(self, ipr: AsyncIPRoute, protocol: int):
        self.ipr = ipr
        self.protocol = protocol

    async def tunnel_indexes(self, count: int) -> dict[int, int]:
        """ifindex of ``bond0-ip6tnl<j>`` for each j that exists."""
        result = {}
        for j in range(count):
            link = await links.link_by_name(self.ipr, seed_tunnel_name(j))
            if link is not None:
                result[j] = link["index"]
        return result

    async def bond_address(self) -> IPv6Address | None:
        link = await links.link_by_name(self.ipr, BOND_DEVICE)
        if link is None:
            return None
        addresses = await links.global_addresses(self.ipr, link["index"])
        return addresses[0][0].ip if addresses else None

    async def links(self) -> list[LinkFacts]:
        return [facts async for msg in await self.ipr.link("dump") if (facts := link_facts(msg))]

    async def routes(self, networks: Iterable[IPNetwork]) -> dict[IPNetwork, Route]:
        """Main-table routes for ``networks`` plus every route carrying our protocol."""
        wanted = set(networks)
        found: dict[IPNetwork, Route] = {}
        for family in (socket.AF_INET, socket.AF_INET6):
            async for msg in await self.ipr.route("dump", family=family):
                if msg.get("RTA_TABLE", msg["table"]) != MAIN_TABLE or msg.get("RTA_DST") is None:
                    continue
                network = ip_network(f"{msg.get('RTA_DST')}/{msg['dst_len']}")
                if network in wanted or msg["proto"] == self.protocol:
                    found[network] = Route(msg.get("RTA_OIF"), msg["proto"])
        return found

    async def replace(self, network: IPNetwork, oif: int) -> None:
        await self.ipr.route(
            "replace", dst=str(network), oif=oif, proto=self.protocol, table=MAIN_TABLE,
            family=socket.AF_INET if network.version == 4 else socket.AF_INET6,
        )

    async def remove(self, network: IPNetwork) -> None:
        try:
            await self.ipr.route(
                "del", dst=str(network), proto=self.protocol, table=MAIN_TABLE,
                family=socket.AF_INET if network.version == 4 else socket.AF_INET6,
            )
        except NetlinkError as exc:
            if exc.code != errno.ESRCH:
                raise


def link_facts(msg) -> LinkFacts | None:
    """The bond-relevant facts of an RTM_NEWLINK or RTM_DELLINK message, None for anything else."""
    if msg.get("event") not in ("RTM_NEWLINK", "RTM_DELLINK") or msg.get("IFLA_IFNAME") is None:
        return None
    data = msg.get_nested("IFLA_LINKINFO", "IFLA_INFO_DATA")
    carrier = msg.get("IFLA_CARRIER")
    return LinkFacts(
        index=msg["index"],
        name=msg.get("IFLA_IFNAME"),
        master=msg.get("IFLA_MASTER"),
        carrier=None if carrier is None else bool(carrier),
        active_slave=data.get("IFLA_BOND_ACTIVE_SLAVE") if data else None,
    )


async def kernel_events(clock) -> AsyncIterator[LinkChanged | RouteChanged]:
    """Route and link changes as the core's events, until cancelled."""
    async for msg in route_and_link_events():
        event = msg.get("event")
        if event in ("RTM_NEWLINK", "RTM_DELLINK"):
            if (link := link_facts(msg)) is not None:
                yield LinkChanged(clock(), link, removed=event == "RTM_DELLINK")
        elif event in ("RTM_NEWROUTE", "RTM_DELROUTE") and (dst := msg.get("RTA_DST")) is not None:
            network = ip_network(f"{dst}/{msg['dst_len']}", strict=False)
            yield RouteChanged(clock(), network, msg.get("RTA_OIF"), msg["proto"], removed=event == "RTM_DELROUTE")


async def route_and_link_events(netns: str | None = None) -> AsyncIterator[object]:
    """Yield every route and link change (ours included) until cancelled."""
    kwargs = {"netns": netns} if netns else {}
    events = AsyncIPRoute(**kwargs)
    try:
        await events.bind(groups=RTMGRP_LINK | RTMGRP_IPV4_ROUTE | RTMGRP_IPV6_ROUTE)
        while True:
            async for msg in events.get():
                yield msg
    finally:
        events.close()
