"""Links: lookups without a stray ACK, deletes, kernel features, taps, and
``LinkFacts``, the one way every program reads a link message.

Each ``ensure_*`` (here, in ``bond`` and in ``ip6tnl``) reads the kernel first
and only changes what differs, so running it twice is harmless; it returns
the ifindex and an ``Ensured`` outcome.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from enum import StrEnum

from pyroute2 import AsyncIPRoute
from pyroute2.netlink import NLM_F_REQUEST
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.nlsocket import NetlinkRequest
from pyroute2.netlink.rtnl import RTM_GETLINK, RTM_NEWLINK
from pyroute2.netlink.rtnl.ifinfmsg import IFF_UP, ifinfmsg

from netlink_adapter.dumps import dump
from netlink_adapter.errors import (
    KernelFeatureMissing,
    NotFound,
    creation_error,
    deleted,
    domain_error,
    raise_domain_error,
    translated,
)
from netlink_adapter.headers import nlmsg_header, parse_header

# IFLA_TUN_TYPE values (IFF_TUN, IFF_TAP of linux/if_tun.h); pyroute2 compares literals too.
TUN_TYPES = {1: "tun", 2: "tap"}
BONDING_FEATURE = "bonding (CONFIG_BONDING)"
IP6TNL_FEATURE = "ip6tnl (CONFIG_IPV6_TUNNEL)"


class Ensured(StrEnum):
    """What an ``ensure_*`` did to a device (the value is the word logs use)."""

    KEPT = "kept"  # already as wanted: nothing changed
    CREATED = "created"
    REPLACED = "replaced"  # deleted and created again (routes through it are gone)
    ADJUSTED = "adjusted"  # changed in place

    def then_adjusted(self) -> Ensured:
        """This outcome after a further in-place change."""
        return Ensured.ADJUSTED if self is Ensured.KEPT else self


@dataclass(frozen=True)
class LinkFacts:
    """What a link message (dump, lookup or event) says that any program here uses."""

    index: int
    name: str
    master: int | None
    carrier: bool | None  # None: the message does not say
    active_slave: int | None  # bonds only
    up: bool  # administratively (IFF_UP)
    device_type: int  # ARPHRD_*
    primary: int | None = None  # bonds only
    mac: str | None = None


def link_facts(msg) -> LinkFacts | None:
    """The facts of a parsed link message; None for one without a name (or no link message)."""
    name = msg.get("IFLA_IFNAME")
    if name is None or "ifi_type" not in msg:
        return None
    data = msg.get_nested("IFLA_LINKINFO", "IFLA_INFO_DATA")
    carrier = msg.get("IFLA_CARRIER")
    return LinkFacts(
        index=msg["index"],
        name=name,
        master=msg.get("IFLA_MASTER"),
        carrier=None if carrier is None else bool(carrier),
        active_slave=data.get("IFLA_BOND_ACTIVE_SLAVE") if data else None,
        up=bool(msg["flags"] & IFF_UP),
        device_type=msg["ifi_type"],
        primary=data.get("IFLA_BOND_PRIMARY") if data else None,
        mac=msg.get("IFLA_ADDRESS"),
    )


def link_kind(link) -> str | None:
    return link.get_nested("IFLA_LINKINFO", "IFLA_INFO_KIND")


def is_up(link) -> bool:
    return bool(link["flags"] & IFF_UP)


# --- lookups -------------------------------------------------------------


@translated
async def link_by_name(ipr: AsyncIPRoute, name: str):
    """The link message for ``name``, or None."""
    answers = await _get_link(ipr, name=name)
    return answers[0] if answers else None


@translated
async def link_by_index(ipr: AsyncIPRoute, index: int):
    """The link message for ifindex ``index``, or None."""
    answers = await _get_link(ipr, index=index)
    return answers[0] if answers else None


@translated
async def link_index(ipr: AsyncIPRoute, name: str) -> int | None:
    """The ifindex of ``name``, or None.

    Reads only the fixed header of the answer: decoding a whole link message
    costs more than the kernel's work for it.
    """
    full_parse = ipr.marshal.parse_one_message

    def index_only(data: bytes, offset: int, length: int):
        header = nlmsg_header(data, offset)
        if header.type != RTM_NEWLINK:  # an error: raised as NetlinkError
            return full_parse(header.type, header.flags, header.sequence, data, offset, length)
        index = parse_header(header.type, data, offset).index
        return {
            "header": {"type": header.type, "flags": header.flags, "sequence_number": header.sequence, "error": None},
            "index": index,
        }

    answers = await _get_link(ipr, name=name, parser=index_only)
    return answers[0]["index"] if answers else None


async def _get_link(ipr: AsyncIPRoute, *, name: str | None = None, index: int = 0, parser=None) -> list:
    """RTM_GETLINK for ``name`` or ``index`` without NLM_F_ACK; [] if there is no such link.

    pyroute2's ``link("get")`` asks for an acknowledgement as well, which
    arrives after the answer has ended the request and stays queued on the
    socket for ever: a daemon that looks links up periodically would grow
    by about 75 bytes per lookup.
    """
    msg = ifinfmsg()
    msg["index"] = index
    if name is not None:
        msg["attrs"] = [("IFLA_IFNAME", name)]
    request = NetlinkRequest(ipr, msg, msg_type=RTM_GETLINK, msg_flags=NLM_F_REQUEST, parser=parser)
    await request.send()
    try:
        return [answer async for answer in request.response()]
    except NetlinkError as exc:
        if isinstance(domain_error(exc), NotFound):
            return []
        raise


@translated
async def dump_links(ipr: AsyncIPRoute) -> list[LinkFacts]:
    """Every link of the namespace."""
    return [facts for msg in await dump(ipr, "link") if (facts := link_facts(msg)) is not None]


# --- deletes and features -------------------------------------------------


@translated
async def delete_link(ipr: AsyncIPRoute, name: str) -> bool:
    """Delete ``name`` if present; True if something was deleted, False if it was not there."""
    index = await link_index(ipr, name)
    if index is None:
        return False
    return await deleted(ipr.link("del", index=index))


@translated
async def missing_kernel_features(ipr: AsyncIPRoute) -> list[str]:
    """Names of the device types this kernel cannot create (bonding, ip6tnl).

    Creates and removes a throw-away device of each kind; EOPNOTSUPP means the
    kernel was built without it (and cannot load it).
    """
    missing = []
    probes = {
        BONDING_FEATURE: {"kind": "bond"},
        # A remote of its own: an any/any tunnel would clash with the fallback ip6tnl0.
        IP6TNL_FEATURE: {"kind": "ip6tnl", "ip6tnl_proto": 0, "ip6tnl_remote": "2001:db8::1"},
    }
    for feature, spec in probes.items():
        name = f"hvdp{secrets.token_hex(4)}"
        try:
            await ipr.link("add", ifname=name, **spec)
        except NetlinkError as exc:
            error = creation_error(exc, feature)
            if isinstance(error, KernelFeatureMissing):
                missing.append(feature)
                continue
            raise_domain_error(exc, error)
        await delete_link(ipr, name)
    return missing


# --- taps ----------------------------------------------------------------


def tap_state(link) -> dict:
    data = link.get_nested("IFLA_LINKINFO", "IFLA_INFO_DATA")
    return {
        "type": TUN_TYPES.get(data.get("IFLA_TUN_TYPE")) if data else None,
        "persist": bool(data.get("IFLA_TUN_PERSIST")) if data else False,
        "master": link.get("IFLA_MASTER"),
        "carrier": bool(link.get("IFLA_CARRIER")),
    }


@translated
async def ensure_tap(ipr: AsyncIPRoute, name: str) -> tuple[int, Ensured]:
    """A persistent tap ``name`` (carrier off until OpenVPN attaches): (index, KEPT | CREATED | REPLACED)."""
    link = await link_by_name(ipr, name)
    if link is not None and link_kind(link) == "tun" and tap_state(link)["type"] == "tap":
        return link["index"], Ensured.KEPT
    outcome = Ensured.CREATED
    if link is not None:
        await delete_link(ipr, name)
        outcome = Ensured.REPLACED
    await ipr.link("add", ifname=name, kind="tuntap", mode="tap")
    return await link_index(ipr, name), outcome
