"""The bond: desired attributes (``BondSpec``), what a bond has, and ``ensure_bond``.

Importing this module registers the bond attributes pyroute2 0.9 lacks (the
package does it on import, before any link message is parsed).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from ipaddress import IPv6Address, ip_address

from pyroute2 import AsyncIPRoute
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg
from pyroute2.netlink.rtnl.ifinfmsg.plugins.bond import bond as _pyroute2_bond

from netlink_adapter.errors import translated
from netlink_adapter.links import Ensured, delete_link, is_up, link_by_index, link_by_name, link_kind

BOND_MODES = {"balance-rr": 0, "active-backup": 1}
ARP_VALIDATE = {"none": 0, "active": 1, "backup": 2, "all": 3}


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


@dataclass(frozen=True)
class BondSpec:
    """Desired bond attributes.

    ``ns_targets`` non-empty selects the IPv6 NS monitor (``arp_interval`` >
    0, miimon 0); otherwise carrier sensing with ``miimon``.
    """

    mode: str = "active-backup"
    miimon: int = 100
    use_carrier: int = 1
    # "none" (0) and all_slaves_active make the bond split-tolerant: every slave has the
    # bond's MAC and passes frames up, so a peer on the other server still reaches us
    # (docs/server-steering.md). vpn2 has "active" (1) and 0.
    fail_over_mac: int = 0
    all_slaves_active: int = 1
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
                "all_slaves_active": self.all_slaves_active,
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
        "all_slaves_active": data.get("IFLA_BOND_ALL_SLAVES_ACTIVE"),
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


@translated
async def ensure_bond(ipr: AsyncIPRoute, name: str, spec: BondSpec, slaves: list[int]) -> tuple[int, Ensured]:
    """Bond ``name`` with ``spec``, ``slaves`` enslaved (first is primary), up."""
    link = await link_by_name(ipr, name)
    outcome = Ensured.KEPT
    if link is not None:
        differences = bond_differences(link, spec)
        if _REBUILD & differences.keys():
            await delete_link(ipr, name)
            link, outcome = None, Ensured.REPLACED
        elif differences:
            # Only what differs: some options are refused on a bond with slaves even when unchanged.
            await ipr.link("set", index=link["index"], kind="bond", **spec.netlink_attrs(differences))
            outcome = Ensured.ADJUSTED
    if link is None:
        await ipr.link("add", ifname=name, kind="bond", **spec.netlink_attrs())
        outcome = Ensured.CREATED if outcome is Ensured.KEPT else outcome
    link = await link_by_name(ipr, name)
    index = link["index"]
    for slave in slaves:
        current = await link_by_index(ipr, slave)
        if current.get("IFLA_MASTER") != index:
            # A slave must be down to be enslaved.
            await ipr.link("set", index=slave, state="down")
            await ipr.link("set", index=slave, master=index)
            outcome = outcome.then_adjusted()
    if spec.mode == "active-backup" and slaves and bond_state(link)["primary"] != slaves[0]:
        await ipr.link("set", index=index, kind="bond", bond_primary=slaves[0])
        outcome = outcome.then_adjusted()
    if not is_up(link):
        await ipr.link("set", index=index, state="up")
        outcome = outcome.then_adjusted()
    return index, outcome


@translated
async def set_primary(ipr: AsyncIPRoute, bond: int, slave: int) -> None:
    """Make ``slave`` the bond's primary. With ``primary_reselect always`` (vpn2's) the
    bond moves to it at once if it has carrier, and comes back to it whenever it
    regains carrier after a failover."""
    await ipr.link("set", index=bond, kind="bond", bond_primary=slave)
