"""Settings of ``bonding setup``, from vpn2's environment variables."""

from __future__ import annotations

from ipaddress import IPv6Address, IPv6Network
from typing import Annotated, Literal

from pydantic import BeforeValidator, Field, field_validator, model_validator

from bonding.plan import (
    DEFAULT_VPN_NETWORK,
    AddressPlan,
    parse_vpn_network,
    seed_client_index_for_pod,
    shoot_client_index_for_pod,
)
from daemonkit.config import EnvSettings, IPv6AddressList


def _vpn_network(value: object) -> object:
    return parse_vpn_network(value) if isinstance(value, str) else value


VpnNetwork = Annotated[IPv6Network, BeforeValidator(_vpn_network)]


class BondingSettings(EnvSettings):
    is_shoot_client: bool = Field(False, description="`true` in vpn-shoot pods, `false` in kube-apiserver pods")
    pod_name: str = Field(
        "",
        description="vpn-shoot: `vpn-shoot-<j>` gives index j; seed: hashed into the seed-client index",
    )
    ha_vpn_servers: int = Field(2, ge=1, le=16, description="OpenVPN servers = taps `tap0`…")
    ha_vpn_clients: int = Field(2, ge=1, le=256, description="vpn-shoot pods = seed-side tunnels `bond0-ip6tnl0`…")
    vpn_network: VpnNetwork = Field(parse_vpn_network(DEFAULT_VPN_NETWORK), description="must be an IPv6 /96")
    bonding_mode: Literal["active-backup", "balance-rr"] = Field("active-backup", description="mode of `bond0`")
    seed_client_index: int | None = Field(
        None, ge=1, le=0xFFFF, description="seed side: explicit bond address index instead of the `POD_NAME` hash"
    )
    bond_split_tolerant: bool = Field(
        True,
        description="`fail_over_mac none` + `all_slaves_active 1`: a peer on the other server still reaches this "
        "pod (needed by server steering); `false`: vpn2's `fail_over_mac active`",
    )
    # Opt-in monitor for failures carrier sensing cannot see (gardener #13649).
    bond_monitor: Literal["carrier", "ns"] = Field(
        "carrier",
        description="`carrier`: carrier sensing (`miimon 100`); `ns`: the bond's IPv6 neighbour-solicitation monitor",
    )
    bond_ns_interval_ms: int = Field(
        200, ge=10, le=10_000,
        description="`arp_interval` of the NS monitor, in milliseconds",
    )
    bond_ns_missed_max: int = Field(
        5, ge=1, le=255,
        description="`arp_missed_max` of the NS monitor: intervals missed before a slave is down",
    )
    bond_ns_validate: Literal["none", "active", "backup", "all"] = Field(
        "none",
        description="`arp_validate` of the NS monitor: `none` counts any frame, `active`/`all` only targets' answers",
    )
    bond_ns_targets: IPv6AddressList = Field(
        default_factory=list,
        description="`ns_ip6_target`s of the NS monitor (comma list, ≤ 16); default: every vpn-shoot's but one's own",
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        "info",
        description="JSON lines on stderr from this level up",
    )

    @field_validator("bond_ns_targets")
    @classmethod
    def _at_most_16(cls, value: list[IPv6Address]) -> list[IPv6Address]:
        if len(value) > 16:  # BOND_MAX_NS_TARGETS
            raise ValueError("at most 16 targets")
        return value

    @model_validator(mode="after")
    def _identity(self) -> BondingSettings:
        if self.is_shoot_client:
            if not self.pod_name:
                raise ValueError("POD_NAME: required on the shoot side (vpn-shoot-<index>)")
            try:
                index = shoot_client_index_for_pod(self.pod_name)
            except ValueError as exc:
                raise ValueError(f"POD_NAME: {exc}") from None
            if index >= self.ha_vpn_clients:
                raise ValueError(
                    f"POD_NAME: index {index} of {self.pod_name!r} is not below HA_VPN_CLIENTS={self.ha_vpn_clients}"
                )
        elif self.seed_client_index is None and not self.pod_name:
            raise ValueError("POD_NAME: required on the seed side unless SEED_CLIENT_INDEX is set")
        return self

    @property
    def plan(self) -> AddressPlan:
        return AddressPlan(self.vpn_network)

    @property
    def own_address(self) -> IPv6Address:
        if self.is_shoot_client:
            return self.plan.shoot_client(shoot_client_index_for_pod(self.pod_name))
        index = self.seed_client_index or seed_client_index_for_pod(self.pod_name)
        return self.plan.seed_client(index)

    @property
    def ns_targets(self) -> list[IPv6Address]:
        """Targets of the NS monitor: configured, else every shoot client but ourselves."""
        if self.bond_ns_targets:
            return list(self.bond_ns_targets)
        own = self.own_address
        return [a for a in self.plan.shoot_clients(self.ha_vpn_clients) if a != own]
