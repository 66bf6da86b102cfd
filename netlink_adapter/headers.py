"""The fixed headers of rtnetlink messages, read without pyroute2's decoder.

Decoding a whole link or route message costs more than the kernel's work for
it; a parser hook that looks at these few bytes first can skip what does not
matter (``events.EventStream``) or take only the ifindex (``links.link_index``).
"""

from __future__ import annotations

import struct
from socket import AF_INET, AF_INET6
from typing import NamedTuple

from pyroute2.netlink.rtnl import RTM_DELLINK, RTM_DELROUTE, RTM_NEWLINK, RTM_NEWROUTE
from pyroute2.netlink.rtnl.ifinfmsg import IFF_UP

NLMSG_HEADER = struct.Struct("IHHII")  # length, type, flags, sequence, pid
IFINFOMSG = struct.Struct("BxHiII")  # family, type, index, flags, change
RTMSG = struct.Struct("BBBBBBBBI")  # family, dst_len, src_len, tos, table, protocol, scope, type, flags

HOST_PREFIX_LENGTH = {AF_INET: 32, AF_INET6: 128}
LINK_MESSAGES = (RTM_NEWLINK, RTM_DELLINK)
ROUTE_MESSAGES = (RTM_NEWROUTE, RTM_DELROUTE)


class NlmsgHeader(NamedTuple):
    length: int
    type: int
    flags: int
    sequence: int
    pid: int


class LinkHeader(NamedTuple):
    """The ``ifinfomsg`` of an RTM_NEWLINK / RTM_DELLINK."""

    deleted: bool
    family: int
    device_type: int  # ARPHRD_*
    index: int
    flags: int  # IFF_*

    @property
    def up(self) -> bool:
        return bool(self.flags & IFF_UP)


class RouteHeader(NamedTuple):
    """The ``rtmsg`` of an RTM_NEWROUTE / RTM_DELROUTE."""

    deleted: bool
    family: int
    dst_len: int
    table: int  # 8 bits: tables above 255 say RT_TABLE_COMPAT here
    proto: int
    scope: int
    type: int  # RTN_*
    flags: int  # RTM_F_*

    @property
    def is_host(self) -> bool:
        """A /32 or /128 route."""
        return self.dst_len == HOST_PREFIX_LENGTH.get(self.family)


Header = LinkHeader | RouteHeader


def nlmsg_header(data: bytes, offset: int = 0) -> NlmsgHeader:
    return NlmsgHeader(*NLMSG_HEADER.unpack_from(data, offset))


def parse_header(kind: int, data: bytes, offset: int = 0) -> Header | None:
    """The fixed header after the nlmsghdr at ``offset`` for link and route messages, else None."""
    body = offset + NLMSG_HEADER.size
    if kind in LINK_MESSAGES:
        family, device_type, index, flags, _ = IFINFOMSG.unpack_from(data, body)
        return LinkHeader(kind == RTM_DELLINK, family, device_type, index, flags)
    if kind in ROUTE_MESSAGES:
        family, dst_len, _, _, table, proto, scope, route_type, flags = RTMSG.unpack_from(data, body)
        return RouteHeader(kind == RTM_DELROUTE, family, dst_len, table, proto, scope, route_type, flags)
    return None
