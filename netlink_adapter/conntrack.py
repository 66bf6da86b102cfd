"""Conntrack entries by mark: the original-direction tuples, and a flush.

One ctnetlink socket in family AF_UNSPEC covers IPv4 and IPv6; the kernel
filters by ``mark & mask`` itself. Needs ``nf_conntrack_netlink``.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address, ip_address

from pyroute2.conntrack import AsyncConntrack

from netlink_adapter.errors import translated

IPAddress = IPv4Address | IPv6Address


@dataclass(frozen=True)
class Flow:
    """A connection's original-direction tuple: for a local connection, its socket's own addresses."""

    family: int  # AF_INET / AF_INET6
    proto: int  # IPPROTO_*
    source: IPAddress
    source_port: int | None  # None for protocols without ports
    destination: IPAddress
    destination_port: int | None


def _conntrack(netns: str | None) -> AsyncConntrack:
    return AsyncConntrack(nfgen_family=socket.AF_UNSPEC, **({"netns": netns} if netns else {}))


def _flow(entry) -> Flow:
    orig = entry.tuple_orig
    return Flow(orig.family, orig.proto, ip_address(orig.saddr), orig.sport, ip_address(orig.daddr), orig.dport)


@translated
async def flows_with_mark(mark: int, mask: int, netns: str | None = None) -> list[Flow]:
    """The conntrack entries with ``ct mark & mask == mark`` (both families)."""
    if not mark:
        raise ValueError("pyroute2 reads mark 0 as no filter at all")
    async with _conntrack(netns) as conntrack:
        return [_flow(entry) async for entry in await conntrack.dump_entries(mark=mark, mark_mask=mask)]


@translated
async def all_flows(netns: str | None = None) -> list[Flow]:
    """Every conntrack entry (both families)."""
    async with _conntrack(netns) as conntrack:
        return [_flow(entry) async for entry in await conntrack.dump_entries()]


@translated
async def flush_mark(mark: int, mask: int, netns: str | None = None) -> list[Flow]:
    """Delete every entry with ``ct mark & mask == mark`` (both families, one request); the flows it had."""
    if not mark:
        raise ValueError("flush_mark(0) would delete every unmarked connection")
    async with _conntrack(netns) as conntrack:
        flows = [_flow(entry) async for entry in await conntrack.dump_entries(mark=mark, mark_mask=mask)]
        await conntrack.flush(mark=mark, mark_mask=mask)
    return flows
