"""Routes: a typed dump, replace, and a delete that is done when the route is gone."""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Network, IPv6Network, ip_network
from socket import AF_INET, AF_INET6

from pyroute2 import AsyncIPRoute
from pyroute2.netlink.rtnl import rt_type

from netlink_adapter.dumps import dump
from netlink_adapter.errors import deleted, translated

IPNetwork = IPv4Network | IPv6Network

# linux/rtnetlink.h; pyroute2 names neither (its iproute DEFAULT_TABLE is 254 under another name).
RT_TABLE_MAIN = 254
RTM_F_CLONED = 0x200  # a cached exception (e.g. a PMTU), not a route
RTN_UNICAST = rt_type["unicast"]
RTN_UNREACHABLE = rt_type["unreachable"]
FAMILIES = (AF_INET, AF_INET6)
_UNSPECIFIED = {AF_INET: "0.0.0.0", AF_INET6: "::"}


@dataclass(frozen=True)
class RouteFacts:
    """One route as a dump or an event shows it."""

    dst: IPNetwork  # 0.0.0.0/0 or ::/0 for a default route
    oif: int | None  # None: no single device (multipath, blackhole, ...)
    proto: int  # RTPROT_*: who made it (our daemons use their own number)
    table: int
    type: int  # RTN_*

    @property
    def is_host(self) -> bool:
        return self.dst.prefixlen == self.dst.max_prefixlen


def route_facts(msg) -> RouteFacts | None:
    """The facts of a parsed route message; None for a cached exception or a family other than IPv4/IPv6."""
    family = msg["family"]
    if family not in FAMILIES or msg["flags"] & RTM_F_CLONED:
        return None
    dst = msg.get("RTA_DST") or _UNSPECIFIED[family]
    return RouteFacts(
        dst=ip_network(f"{dst}/{msg['dst_len']}", strict=False),
        oif=msg.get("RTA_OIF"),
        proto=msg["proto"],
        table=msg.get("RTA_TABLE", msg["table"]),
        type=msg["type"],
    )


@translated
async def dump_routes(ipr: AsyncIPRoute, table: int | None = RT_TABLE_MAIN) -> list[RouteFacts]:
    """Every IPv4 and IPv6 route of ``table`` (None: of every table), cached exceptions left out."""
    found = []
    for family in FAMILIES:
        for msg in await dump(ipr, "route", family=family):
            route = route_facts(msg)
            if route is not None and (table is None or route.table == table):
                found.append(route)
    return found


@translated
async def replace_route(ipr: AsyncIPRoute, dst: IPNetwork, oif: int, *, proto: int, table: int = RT_TABLE_MAIN) -> None:
    """``dst`` through ``oif`` in ``table``, marked with ``proto``, whatever was there before."""
    await ipr.route("replace", dst=str(dst), oif=oif, proto=proto, table=table, family=_family(dst))


@translated
async def replace_unreachable_route(ipr: AsyncIPRoute, dst: IPNetwork, *, proto: int, table: int) -> None:
    """``unreachable dst`` in ``table``: a lookup there ends with EHOSTUNREACH instead of going on to the next rule."""
    await ipr.route("replace", dst=str(dst), type="unreachable", proto=proto, table=table, family=_family(dst))


@translated
async def delete_route(
    ipr: AsyncIPRoute, dst: IPNetwork, *, oif: int | None = None, proto: int | None = None, table: int = RT_TABLE_MAIN
) -> bool:
    """Delete ``dst`` from ``table``; True if deleted, False if there was none.

    ``oif`` / ``proto`` restrict it to the route through that device / with
    that protocol (a route re-pointed elsewhere or someone else's stays).
    """
    restrict = {k: v for k, v in (("oif", oif), ("proto", proto)) if v is not None}
    return await deleted(ipr.route("del", dst=str(dst), table=table, family=_family(dst), **restrict))


def _family(dst: IPNetwork) -> int:
    return AF_INET if dst.version == 4 else AF_INET6
