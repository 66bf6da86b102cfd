"""ip6tnl devices (mode any, encaplimit none): what one has, and ensure it."""

from __future__ import annotations

import errno
from dataclasses import dataclass
from ipaddress import IPv6Address, ip_address

from pyroute2 import AsyncIPRoute
from pyroute2.arp import ARPHRD_TUNNEL6  # noqa: F401  (the device type of ip6tnl links, for callers)
from pyroute2.netlink.exceptions import NetlinkError

from netlink_adapter.dumps import dump
from netlink_adapter.errors import AlreadyExists, NotFound, creation_error, raise_domain_error, translated
from netlink_adapter.links import IP6TNL_FEATURE, Ensured, delete_link, is_up, link_by_name, link_index, link_kind

# linux/ip6_tunnel.h; pyroute2 has no name for it.
IP6_TNL_F_IGN_ENCAP_LIMIT = 0x1
# IFLA_IP6TNL_PROTO 0: IPv4 and IPv6 inside ("mode any").
ANY_PROTO = 0


@dataclass(frozen=True)
class Ip6tnlFacts:
    name: str
    index: int
    local: IPv6Address | None
    remote: IPv6Address | None
    proto: int | None  # IFLA_IP6TNL_PROTO
    encap_limit: int | None
    flags: int  # IFLA_IP6TNL_FLAGS
    up: bool

    @property
    def standard(self) -> bool:
        """Mode any, encaplimit none: as this project makes them."""
        return self.proto == ANY_PROTO and bool(self.flags & IP6_TNL_F_IGN_ENCAP_LIMIT)

    def matches(self, local: IPv6Address, remote: IPv6Address) -> bool:
        return self.standard and self.local == local and self.remote == remote


def ip6tnl_state(link) -> Ip6tnlFacts:
    """The ip6tnl attributes of a link message (all None for another kind)."""
    data = link.get_nested("IFLA_LINKINFO", "IFLA_INFO_DATA") or {}
    local, remote = data.get("IFLA_IP6TNL_LOCAL"), data.get("IFLA_IP6TNL_REMOTE")
    return Ip6tnlFacts(
        name=link.get("IFLA_IFNAME"),
        index=link["index"],
        local=ip_address(local) if local else None,
        remote=ip_address(remote) if remote else None,
        proto=data.get("IFLA_IP6TNL_PROTO"),
        encap_limit=data.get("IFLA_IP6TNL_ENCAP_LIMIT"),
        flags=data.get("IFLA_IP6TNL_FLAGS") or 0,
        up=is_up(link),
    )


def ip6tnl_matches(link, local: IPv6Address, remote: IPv6Address) -> bool:
    return link is not None and link_kind(link) == "ip6tnl" and ip6tnl_state(link).matches(local, remote)


@translated
async def dump_ip6tnl(ipr: AsyncIPRoute) -> list[Ip6tnlFacts]:
    """Every ip6tnl device of the namespace."""
    return [ip6tnl_state(link) for link in await dump(ipr, "link") if link_kind(link) == "ip6tnl"]


@translated
async def ensure_ip6tnl(ipr: AsyncIPRoute, name: str, local: IPv6Address, remote: IPv6Address) -> tuple[int, Ensured]:
    """ip6tnl ``name`` (mode any, encaplimit none) from ``local`` to ``remote``, up.

    A matching device is kept (routes through it survive); a device with other
    attributes is replaced.
    """
    link = await link_by_name(ipr, name)
    outcome = Ensured.KEPT
    if link is not None and not ip6tnl_matches(link, local, remote):
        await delete_link(ipr, name)
        link, outcome = None, Ensured.REPLACED
    if link is None:
        await _add_ip6tnl(ipr, name, local, remote)
        link = await link_by_name(ipr, name)
        outcome = Ensured.CREATED if outcome is Ensured.KEPT else outcome
    if not is_up(link):
        await ipr.link("set", index=link["index"], state="up")
        outcome = outcome.then_adjusted()
    return link["index"], outcome


@translated
async def create_or_ensure_ip6tnl(
    ipr: AsyncIPRoute, name: str, local: IPv6Address, remote: IPv6Address
) -> tuple[int, Ensured]:
    """``ensure_ip6tnl`` for a device that is most likely absent (the caller knows of none).

    Creates it straight away, one round trip less than looking first; only if
    the name is taken does it look at what is there, exactly as ``ensure_ip6tnl``.
    """
    try:
        await _add_ip6tnl(ipr, name, local, remote)
    except AlreadyExists:
        return await ensure_ip6tnl(ipr, name, local, remote)
    index = await link_index(ipr, name)
    if index is None:  # deleted by someone else in between
        raise NotFound(errno.ENODEV, f"{name} vanished right after it was created")
    return index, Ensured.CREATED


async def _add_ip6tnl(ipr: AsyncIPRoute, name: str, local: IPv6Address, remote: IPv6Address) -> None:
    try:
        await ipr.link(
            "add",
            ifname=name,
            kind="ip6tnl",
            ip6tnl_local=str(local),
            ip6tnl_remote=str(remote),
            ip6tnl_encap_limit=0,
            ip6tnl_flags=IP6_TNL_F_IGN_ENCAP_LIMIT,
            ip6tnl_proto=ANY_PROTO,
            state="up",  # in the same request: one netlink round trip less per tunnel
        )
    except NetlinkError as exc:
        raise_domain_error(exc, creation_error(exc, IP6TNL_FEATURE))
