"""Netlink adapter for the link-level objects of the bond network.

Thin async functions over pyroute2's ``AsyncIPRoute``: persistent taps, the
bond, ip6tnl devices and addresses. Each ``ensure_*`` reads the kernel first
and only changes what differs, so running it twice is harmless; ``*_state``
functions turn netlink messages into plain values for comparison and tests.
"""

from __future__ import annotations

import errno
import secrets
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from ipaddress import IPv6Address, IPv6Interface, ip_address

from pyroute2 import AsyncIPRoute
from pyroute2.netlink import NLM_F_REQUEST
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.nlsocket import NetlinkRequest
from pyroute2.netlink.rtnl import RTM_GETLINK, RTM_NEWLINK
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg
from pyroute2.netlink.rtnl.ifinfmsg.plugins.bond import bond as _pyroute2_bond

IFA_F_NODAD = 0x02
IP6_TNL_F_IGN_ENCAP_LIMIT = 0x1
BOND_MODES = {"balance-rr": 0, "active-backup": 1}
RT_SCOPE_UNIVERSE = 0


class KernelFeatureMissing(RuntimeError):
    """The running kernel lacks a device type this project needs."""


async def link_by_name(ipr: AsyncIPRoute, name: str):
    """The link message for ``name``, or None."""
    answers = await _get_link(ipr, name)
    return answers[0] if answers else None


# Fixed headers, for parser hooks that look at a message before pyroute2 decodes it.
NLMSG_HEADER = struct.Struct("IHHII")  # length, type, flags, sequence, pid
IFINFOMSG = struct.Struct("BxHiII")  # family, type, index, flags, change


async def link_index(ipr: AsyncIPRoute, name: str) -> int | None:
    """The ifindex of ``name``, or None.

    Reads only the fixed header of the answer: decoding a whole link message
    costs more than the kernel's work for it.
    """
    full_parse = ipr.marshal.parse_one_message

    def index_only(data: bytes, offset: int, length: int):
        _, kind, flags, seq, _ = NLMSG_HEADER.unpack_from(data, offset)
        if kind != RTM_NEWLINK:
            return full_parse(kind, flags, seq, data, offset, length)  # an error: raised as NetlinkError
        index = IFINFOMSG.unpack_from(data, offset + 16)[2]
        return {"header": {"type": kind, "flags": flags, "sequence_number": seq, "error": None}, "index": index}

    answers = await _get_link(ipr, name, parser=index_only)
    return answers[0]["index"] if answers else None


async def _get_link(ipr: AsyncIPRoute, name: str, parser=None) -> list:
    """RTM_GETLINK for ``name`` without NLM_F_ACK; [] if there is no such link.

    pyroute2's ``link("get")`` asks for an acknowledgement as well, which
    arrives after the answer has ended the request and stays queued on the
    socket for ever: a daemon that looks links up periodically would grow
    by about 75 bytes per lookup.
    """
    msg = ifinfmsg()
    msg["attrs"] = [("IFLA_IFNAME", name)]
    request = NetlinkRequest(ipr, msg, msg_type=RTM_GETLINK, msg_flags=NLM_F_REQUEST, parser=parser)
    await request.send()
    try:
        return [answer async for answer in request.response()]
    except NetlinkError as exc:
        if exc.code == errno.ENODEV:
            return []
        raise


def link_kind(link) -> str | None:
    return link.get_nested("IFLA_LINKINFO", "IFLA_INFO_KIND")


async def delete_link(ipr: AsyncIPRoute, name: str) -> bool:
    """Delete ``name`` if present; True if something was deleted."""
    link = await link_by_name(ipr, name)
    if link is None:
        return False
    try:
        await ipr.link("del", index=link["index"])
    except NetlinkError as exc:
        if exc.code != errno.ENODEV:
            raise
        return False
    return True


async def missing_kernel_features(ipr: AsyncIPRoute) -> list[str]:
    """Names of the device types this kernel cannot create (bonding, ip6tnl).

    Creates and removes a throw-away device of each kind; EOPNOTSUPP means the
    kernel was built without it (and cannot load it).
    """
    missing = []
    probes = {
        "bonding (CONFIG_BONDING)": {"kind": "bond"},
        # A remote of its own: an any/any tunnel would clash with the fallback ip6tnl0.
        "ip6tnl (CONFIG_IPV6_TUNNEL)": {"kind": "ip6tnl", "ip6tnl_proto": 0, "ip6tnl_remote": "2001:db8::1"},
    }
    for feature, spec in probes.items():
        name = f"hvdp{secrets.token_hex(4)}"
        try:
            await ipr.link("add", ifname=name, **spec)
        except NetlinkError as exc:
            if exc.code == errno.EOPNOTSUPP:
                missing.append(feature)
                continue
            raise
        await delete_link(ipr, name)
    return missing


# --- taps ----------------------------------------------------------------


async def ensure_tap(ipr: AsyncIPRoute, name: str) -> tuple[int, str]:
    """A persistent tap ``name`` (carrier off until OpenVPN attaches).

    Returns (index, "kept" | "created" | "replaced").
    """
    link = await link_by_name(ipr, name)
    if link is not None and link_kind(link) == "tun" and tap_state(link)["type"] == "tap":
        return link["index"], "kept"
    outcome = "created"
    if link is not None:
        await delete_link(ipr, name)
        outcome = "replaced"
    await ipr.link("add", ifname=name, kind="tuntap", mode="tap")
    link = await link_by_name(ipr, name)
    return link["index"], outcome


def tap_state(link) -> dict:
    data = link.get_nested("IFLA_LINKINFO", "IFLA_INFO_DATA")
    return {
        "type": {1: "tun", 2: "tap"}.get(data.get("IFLA_TUN_TYPE")) if data else None,
        "persist": bool(data.get("IFLA_TUN_PERSIST")) if data else False,
        "master": link.get("IFLA_MASTER"),
        "carrier": bool(link.get("IFLA_CARRIER")),
    }


# --- bond ----------------------------------------------------------------


class _bond_data(_pyroute2_bond):
    """pyroute2 0.9's bond attributes plus the ones added in Linux 5.x/6.x.

    Without them ``ns_ip6_target`` and ``arp_missed_max`` are silently dropped
    (the bond has no sysfs file for ns_ip6_target either: netlink only).
    Registered through pyroute2's documented link-kind plugin hook.
    """

    nla_map = _pyroute2_bond.nla_map + (
        ("IFLA_BOND_PEER_NOTIF_DELAY", "uint32"),
        ("IFLA_BOND_AD_LACP_ACTIVE", "uint8"),
        ("IFLA_BOND_MISSED_MAX", "uint8"),
        ("IFLA_BOND_NS_IP6_TARGET", "*ipaddr"),
        ("IFLA_BOND_COUPLED_CONTROL", "uint8"),
    )


ifinfmsg.ifinfo.register_link_kind(module={"bond": _bond_data})

ARP_VALIDATE = {"none": 0, "active": 1, "backup": 2, "all": 3}


@dataclass(frozen=True)
class BondSpec:
    """Desired bond attributes.

    ``ns_targets`` non-empty selects the IPv6 NS monitor (``arp_interval`` >
    0, miimon 0); otherwise carrier sensing with ``miimon``.
    """

    mode: str = "active-backup"
    miimon: int = 100
    use_carrier: int = 1
    fail_over_mac: int = 1  # "active"
    num_peer_notif: int = 5
    arp_interval: int = 0
    arp_validate: str = "none"
    missed_max: int = 2
    ns_targets: tuple[IPv6Address, ...] = ()

    def state(self) -> dict:
        """The attributes as ``bond_state`` reports them."""
        if self.mode == "balance-rr":
            base = {"mode": self.mode}
        else:
            base = {
                "mode": self.mode,
                "use_carrier": self.use_carrier,
                "fail_over_mac": self.fail_over_mac,
                "num_peer_notif": self.num_peer_notif,
            }
        if self.ns_targets:
            base.update(
                miimon=0,
                arp_interval=self.arp_interval,
                arp_validate=ARP_VALIDATE[self.arp_validate],
                missed_max=self.missed_max,
                ns_targets=frozenset(self.ns_targets),
            )
        else:
            base.update(miimon=self.miimon, arp_interval=0, ns_targets=frozenset())
        return base

    def netlink_attrs(self, only: Iterable[str] | None = None) -> dict:
        """pyroute2 keyword arguments for all attributes, or for those named in ``only``."""
        state = self.state()
        names = set(state) if only is None else set(only)
        attrs = {f"bond_{k}": v for k, v in state.items() if k in names and k not in ("mode", "ns_targets")}
        if "mode" in names:
            attrs["bond_mode"] = BOND_MODES[self.mode]
        if "ns_targets" in names:
            attrs["bond_ns_ip6_target"] = [str(t) for t in sorted(self.ns_targets)]
        return attrs


def bond_state(link) -> dict:
    """The bond attributes this project sets, read from a link message."""
    data = link.get_nested("IFLA_LINKINFO", "IFLA_INFO_DATA")
    modes = {v: k for k, v in BOND_MODES.items()}
    return {
        "mode": modes.get(data.get("IFLA_BOND_MODE"), data.get("IFLA_BOND_MODE")),
        "miimon": data.get("IFLA_BOND_MIIMON"),
        "use_carrier": data.get("IFLA_BOND_USE_CARRIER"),
        "fail_over_mac": data.get("IFLA_BOND_FAIL_OVER_MAC"),
        "num_peer_notif": data.get("IFLA_BOND_NUM_PEER_NOTIF"),
        "primary": data.get("IFLA_BOND_PRIMARY"),
        "arp_interval": data.get("IFLA_BOND_ARP_INTERVAL"),
        "arp_validate": data.get("IFLA_BOND_ARP_VALIDATE"),
        "missed_max": data.get("IFLA_BOND_MISSED_MAX"),
        "ns_targets": frozenset(ip_address(a) for a in data.get("IFLA_BOND_NS_IP6_TARGET") or ()),
    }


def bond_differences(link, spec: BondSpec) -> dict:
    """Desired attributes the bond does not have (``{"kind": ...}`` if it is no bond)."""
    if link_kind(link) != "bond":
        return {"kind": "bond"}
    state = bond_state(link)
    return {k: v for k, v in spec.state().items() if state.get(k) != v}


# Changing these needs a bond without slaves; recreating is simpler and this
# only happens at init time.
_REBUILD = {"kind", "mode", "fail_over_mac"}


async def ensure_bond(ipr: AsyncIPRoute, name: str, spec: BondSpec, slaves: list[int]) -> tuple[int, str]:
    """Bond ``name`` with ``spec``, ``slaves`` enslaved (first is primary), up.

    Returns (index, "kept" | "created" | "replaced" | "adjusted").
    """
    link = await link_by_name(ipr, name)
    outcome = "kept"
    if link is not None:
        differences = bond_differences(link, spec)
        if _REBUILD & differences.keys():
            await delete_link(ipr, name)
            link, outcome = None, "replaced"
        elif differences:
            # Only what differs: some options are refused on a bond with slaves even when unchanged.
            await ipr.link("set", index=link["index"], kind="bond", **spec.netlink_attrs(differences))
            outcome = "adjusted"
    if link is None:
        await ipr.link("add", ifname=name, kind="bond", **spec.netlink_attrs())
        outcome = "created" if outcome == "kept" else outcome
    link = await link_by_name(ipr, name)
    index = link["index"]
    for slave in slaves:
        current = (await ipr.link("get", index=slave))[0]
        if current.get("IFLA_MASTER") != index:
            # A slave must be down to be enslaved.
            await ipr.link("set", index=slave, state="down")
            await ipr.link("set", index=slave, master=index)
            outcome = "adjusted" if outcome == "kept" else outcome
    if spec.mode == "active-backup" and slaves and bond_state(link)["primary"] != slaves[0]:
        await ipr.link("set", index=index, kind="bond", bond_primary=slaves[0])
        outcome = "adjusted" if outcome == "kept" else outcome
    if not link["flags"] & 1:
        await ipr.link("set", index=index, state="up")
        outcome = "adjusted" if outcome == "kept" else outcome
    return index, outcome


# --- addresses -----------------------------------------------------------


async def global_addresses(ipr: AsyncIPRoute, index: int, family: int = 10) -> list[tuple[IPv6Interface, int]]:
    """(address/prefix, IFA flags) of the universe-scope addresses on a link."""
    result = []
    async for msg in await ipr.addr("dump", index=index, family=family):
        if msg["index"] != index or msg["scope"] != RT_SCOPE_UNIVERSE:
            continue
        flags = msg.get("IFA_FLAGS", msg["flags"])
        result.append((IPv6Interface((msg.get("IFA_ADDRESS"), msg["prefixlen"])), flags))
    return result


async def ensure_only_address(ipr: AsyncIPRoute, index: int, wanted: IPv6Interface) -> bool:
    """``wanted`` (NODAD) as the only global IPv6 address on the link; True if changed."""
    changed = False
    present = False
    for iface, flags in await global_addresses(ipr, index):
        if iface == wanted and flags & IFA_F_NODAD:
            present = True
            continue
        await ipr.addr("del", index=index, address=str(iface.ip), prefixlen=iface.network.prefixlen)
        changed = True
    if not present:
        await ipr.addr(
            "add", index=index, address=str(wanted.ip), prefixlen=wanted.network.prefixlen, flags=IFA_F_NODAD
        )
        changed = True
    return changed


# --- ip6tnl --------------------------------------------------------------


def ip6tnl_state(link) -> dict:
    data = link.get_nested("IFLA_LINKINFO", "IFLA_INFO_DATA")
    local, remote = data.get("IFLA_IP6TNL_LOCAL"), data.get("IFLA_IP6TNL_REMOTE")
    return {
        "local": ip_address(local) if local else None,
        "remote": ip_address(remote) if remote else None,
        "proto": data.get("IFLA_IP6TNL_PROTO"),
        "encap_limit": data.get("IFLA_IP6TNL_ENCAP_LIMIT"),
        "ign_encap_limit": bool((data.get("IFLA_IP6TNL_FLAGS") or 0) & IP6_TNL_F_IGN_ENCAP_LIMIT),
        "up": bool(link["flags"] & 1),
    }


def ip6tnl_matches(link, local: IPv6Address, remote: IPv6Address) -> bool:
    if link is None or link_kind(link) != "ip6tnl":
        return False
    state = ip6tnl_state(link)
    return (
        state["local"] == local
        and state["remote"] == remote
        and state["proto"] == 0
        and state["ign_encap_limit"]
    )


async def ensure_ip6tnl(ipr: AsyncIPRoute, name: str, local: IPv6Address, remote: IPv6Address) -> tuple[int, str]:
    """ip6tnl ``name`` (mode any, encaplimit none) from ``local`` to ``remote``, up.

    A matching device is kept (routes through it survive); a device with other
    attributes is replaced. Returns (index, "kept" | "created" | "replaced" | "adjusted").
    """
    link = await link_by_name(ipr, name)
    outcome = "kept"
    if link is not None and not ip6tnl_matches(link, local, remote):
        await delete_link(ipr, name)
        link, outcome = None, "replaced"
    if link is None:
        await _add_ip6tnl(ipr, name, local, remote)
        link = await link_by_name(ipr, name)
        outcome = "created" if outcome == "kept" else outcome
    if not link["flags"] & 1:
        await ipr.link("set", index=link["index"], state="up")
        outcome = "adjusted" if outcome == "kept" else outcome
    return link["index"], outcome


async def create_or_ensure_ip6tnl(
    ipr: AsyncIPRoute, name: str, local: IPv6Address, remote: IPv6Address
) -> tuple[int, str]:
    """``ensure_ip6tnl`` for a device that is most likely absent (the caller knows of none).

    Creates it straight away, one round trip less than looking first; only if
    the name is taken does it look at what is there, exactly as ``ensure_ip6tnl``.
    """
    try:
        await _add_ip6tnl(ipr, name, local, remote)
    except NetlinkError as exc:
        if exc.code != errno.EEXIST:
            raise
        return await ensure_ip6tnl(ipr, name, local, remote)
    index = await link_index(ipr, name)
    if index is None:  # deleted by someone else in between
        raise NetlinkError(errno.ENODEV, f"{name} vanished right after it was created")
    return index, "created"


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
            ip6tnl_proto=0,
            state="up",  # in the same request: one netlink round trip less per tunnel
        )
    except NetlinkError as exc:
        if exc.code == errno.EOPNOTSUPP:
            raise KernelFeatureMissing("ip6tnl (CONFIG_IPV6_TUNNEL)") from exc
        raise
