"""``bonding setup``: build the bond network of one pod, idempotently.

What vpn2's ``vpn-client setup`` init container does in HA mode: a persistent
``tap<i>`` per OpenVPN server, ``bond0`` over them with the pod's bond
address, on the seed side one ``bond0-ip6tnl<j>`` per shoot client, and the
sysctls of each side. Unlike vpn2 it converges instead of deleting and
recreating: a second run changes nothing that is already right (a tunnel with
routes through it keeps them) and repairs what drifted.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from bonding import sysctl
from bonding.config import BondingSettings
from bonding.plan import BOND_DEVICE, seed_tunnel_name
from netlink_adapter import AsyncIPRoute
from netlink_adapter.addresses import ensure_only_address
from netlink_adapter.bond import BondSpec, ensure_bond
from netlink_adapter.errors import KernelFeatureMissing
from netlink_adapter.ip6tnl import ensure_ip6tnl
from netlink_adapter.links import Ensured, ensure_tap, missing_kernel_features

LOG = logging.getLogger(__name__)


@dataclass
class SetupReport:
    """What a run changed (empty lists: nothing to do)."""

    created: list[str] = field(default_factory=list)
    replaced: list[str] = field(default_factory=list)
    adjusted: list[str] = field(default_factory=list)

    def record(self, name: str, outcome: Ensured) -> None:
        """Note what an ``ensure_*`` call did to ``name`` (KEPT is nothing)."""
        lists = {Ensured.CREATED: self.created, Ensured.REPLACED: self.replaced, Ensured.ADJUSTED: self.adjusted}
        if outcome in lists:
            lists[outcome].append(name)

    @property
    def changed(self) -> bool:
        return bool(self.created or self.replaced or self.adjusted)


def bond_spec(settings: BondingSettings) -> BondSpec:
    # vpn2's MAC handling (fail_over_mac active, backup slaves pass nothing up) unless split-tolerant.
    macs = {} if settings.bond_split_tolerant else {"fail_over_mac": 1, "all_slaves_active": 0}
    if settings.bond_monitor == "ns":
        return BondSpec(
            mode=settings.bonding_mode,
            arp_interval=settings.bond_ns_interval_ms,
            arp_validate=settings.bond_ns_validate,
            missed_max=settings.bond_ns_missed_max,
            ns_targets=tuple(settings.ns_targets),
            **macs,
        )
    return BondSpec(mode=settings.bonding_mode, **macs)


def tap_name(index: int) -> str:
    return f"tap{index}"


async def setup(settings: BondingSettings, ipr: AsyncIPRoute) -> SetupReport:
    """Converge the pod's network namespace to the bond network of ``settings``."""
    missing = await missing_kernel_features(ipr)
    if missing:
        raise KernelFeatureMissing(", ".join(missing))
    report = SetupReport()
    own = settings.own_address

    required, optional = sysctl.sysctls_for(settings.is_shoot_client)
    report.adjusted += sysctl.apply_sysctls(required)
    report.adjusted += sysctl.apply_sysctls(optional, optional=True)

    slaves = []
    for i in range(settings.ha_vpn_servers):
        index, outcome = await ensure_tap(ipr, tap_name(i))
        slaves.append(index)
        report.record(tap_name(i), outcome)

    bond_index, outcome = await ensure_bond(ipr, BOND_DEVICE, bond_spec(settings), slaves)
    report.record(BOND_DEVICE, outcome)
    report.adjusted += sysctl.apply_sysctls(sysctl.bond_neighbour_sysctls(BOND_DEVICE))
    if await ensure_only_address(ipr, bond_index, settings.plan.on_bond(own)):
        report.adjusted.append(f"{BOND_DEVICE} address")

    if not settings.is_shoot_client:
        for j, remote in enumerate(settings.plan.shoot_clients(settings.ha_vpn_clients)):
            name = seed_tunnel_name(j)
            _, outcome = await ensure_ip6tnl(ipr, name, own, remote)
            report.record(name, outcome)

    LOG.info(
        "bond network ready",
        extra={
            "side": "shoot" if settings.is_shoot_client else "seed",
            "address": str(own),
            "mode": settings.bonding_mode,
            "monitor": settings.bond_monitor,
            "created_links": report.created,
            "replaced_links": report.replaced,
            "adjusted_settings": report.adjusted,
        },
    )
    return report
