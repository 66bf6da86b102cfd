"""SOCK_DESTROY (what ``ss -K`` does): abort local TCP/UDP sockets by their addresses.

The owner of a destroyed socket sees ECONNABORTED at once, also when idle.
pyroute2's ``DiagSocket`` is synchronous and returns the kernel's error as a
message instead of raising; a plain ``AsyncNetlinkSocket`` with pyroute2's
default marshal raises it like any other netlink error. Needs
``CONFIG_INET_DIAG_DESTROY`` (EOPNOTSUPP without) and CAP_NET_ADMIN.
"""

from __future__ import annotations

import errno
import socket
import struct
from ipaddress import IPv4Address
from collections.abc import Iterable

from pyroute2.netlink import NETLINK_SOCK_DIAG, NLM_F_ACK, NLM_F_REQUEST
from pyroute2.netlink.diag import SOCK_DESTROY, inet_diag_req
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.nlsocket import AsyncNetlinkSocket

from netlink_adapter.conntrack import Flow
from netlink_adapter.errors import KernelFeatureMissing, raise_domain_error

SOCK_DESTROY_FEATURE = "SOCK_DESTROY (CONFIG_INET_DIAG_DESTROY)"
ALL_STATES = 0xFFFFFFFF
INET_DIAG_NOCOOKIE = 0xFFFFFFFFFFFFFFFF
DESTROYABLE = (socket.IPPROTO_TCP, socket.IPPROTO_UDP)


def _words(address) -> tuple[int, int, int, int]:
    return struct.unpack(">4I", address.packed.ljust(16, b"\0"))


def _request(flow: Flow) -> inet_diag_req:
    req = inet_diag_req()
    req["sdiag_family"], req["sdiag_protocol"], req["idiag_states"] = flow.family, flow.proto, ALL_STATES
    req["idiag_sport"], req["idiag_dport"] = flow.source_port, flow.destination_port
    req["idiag_src"], req["idiag_dst"] = _words(flow.source), _words(flow.destination)
    req["idiag_if"], req["idiag_cookie"] = 0, INET_DIAG_NOCOOKIE
    return req


async def destroy_sockets(flows: Iterable[Flow], netns: str | None = None) -> int:
    """Destroy the local socket of each TCP/UDP flow; how many there were (a flow without one is skipped).

    Raises ``KernelFeatureMissing`` on a kernel without SOCK_DESTROY.
    """
    wanted = [flow for flow in flows if flow.proto in DESTROYABLE]
    if not wanted:
        return 0
    destroyed = 0
    async with AsyncNetlinkSocket(family=NETLINK_SOCK_DIAG, **({"netns": netns} if netns else {})) as diag:
        for flow in wanted:
            try:
                async for _ in await diag.nlm_request(_request(flow), SOCK_DESTROY, NLM_F_REQUEST | NLM_F_ACK):
                    pass
            except NetlinkError as exc:
                if exc.code == errno.ENOENT:  # no such socket (closed, or not a local one)
                    continue
                if exc.code == errno.EOPNOTSUPP:
                    raise KernelFeatureMissing(SOCK_DESTROY_FEATURE) from exc
                raise_domain_error(exc)
            destroyed += 1
    return destroyed


async def sock_destroy_supported(netns: str | None = None) -> bool:
    """Whether this kernel destroys sockets: asks it to destroy one that cannot exist.

    Without the feature the kernel says EOPNOTSUPP before it looks for the
    socket; with it, ENOENT.
    """
    nowhere = Flow(socket.AF_INET, socket.IPPROTO_TCP, IPv4Address(0), 0, IPv4Address(0), 0)
    try:
        await destroy_sockets([nowhere], netns)
    except KernelFeatureMissing:
        return False
    return True
