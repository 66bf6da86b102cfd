"""Addresses: the global ones of a link, one address made the only one, flag names."""

from __future__ import annotations

from ipaddress import IPv6Interface
from socket import AF_INET6

from pyroute2 import AsyncIPRoute
from pyroute2.netlink.rtnl.ifaddrmsg import (
    IFA_F_DADFAILED,
    IFA_F_DEPRECATED,
    IFA_F_NODAD,
    IFA_F_TEMPORARY,
    IFA_F_TENTATIVE,
)
from pyroute2.netlink.rtnl.rtmsg import RT_SCOPE_UNIVERSE

from netlink_adapter.dumps import dump
from netlink_adapter.errors import deleted, translated

# Flags of an address the kernel does not use (yet): bound sockets would fail.
IFA_F_NOT_USABLE = IFA_F_TENTATIVE | IFA_F_DADFAILED
_FLAG_NAMES = {
    IFA_F_NODAD: "nodad",
    IFA_F_DADFAILED: "dadfailed",
    IFA_F_TENTATIVE: "tentative",
    IFA_F_TEMPORARY: "temporary",
    IFA_F_DEPRECATED: "deprecated",
}


def describe_address_flags(flags: int) -> str:
    """The flags an operator may need to see, as ``ip addr`` names them: "nodad,tentative"."""
    return ",".join(name for bit, name in _FLAG_NAMES.items() if flags & bit) or "no flags"


@translated
async def global_addresses(ipr: AsyncIPRoute, index: int, family: int = AF_INET6) -> list[tuple[IPv6Interface, int]]:
    """(address/prefix, IFA flags) of the universe-scope addresses on a link."""
    result = []
    for msg in await dump(ipr, "addr", index=index, family=family):
        if msg["index"] != index or msg["scope"] != RT_SCOPE_UNIVERSE:
            continue
        flags = msg.get("IFA_FLAGS", msg["flags"])
        result.append((IPv6Interface((msg.get("IFA_ADDRESS"), msg["prefixlen"])), flags))
    return result


@translated
async def ensure_only_address(ipr: AsyncIPRoute, index: int, wanted: IPv6Interface) -> bool:
    """``wanted`` (NODAD) as the only global IPv6 address on the link; True if changed."""
    changed = False
    present = False
    for iface, flags in await global_addresses(ipr, index):
        if iface == wanted and flags & IFA_F_NODAD:
            present = True
            continue
        # Gone already (EADDRNOTAVAIL) is as good as deleted.
        await deleted(ipr.addr("del", index=index, address=str(iface.ip), prefixlen=iface.network.prefixlen))
        changed = True
    if not present:
        await ipr.addr(
            "add", index=index, address=str(wanted.ip), prefixlen=wanted.network.prefixlen, flags=IFA_F_NODAD
        )
        changed = True
    return changed
