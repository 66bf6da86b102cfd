"""Settings of the path-controller: vpn2's variables plus probe, announcement and HTTP knobs.

Durations accept a number of seconds (``0.1``) or Go-style units (``100ms``, ``2s``, ``1m30s``).
"""

from __future__ import annotations

from ipaddress import IPv6Address, ip_network
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from bonding.config import VpnNetwork
from bonding.plan import DEFAULT_VPN_NETWORK, AddressPlan, parse_vpn_network
from daemonkit.config import (
    Duration,
    EnvSettings,
    IPAddress,
    IPAddressList,
    IPAddressValue,
    NetworkList,
    OptionalNetwork,
)


class PathControllerSettings(EnvSettings):
    # --- vpn2's variables -------------------------------------------------
    vpn_network: VpnNetwork = Field(parse_vpn_network(DEFAULT_VPN_NETWORK))
    ha_vpn_clients: int = Field(2, ge=1, le=256, description="vpn-shoot pods to probe (::b:0 .. ::b:N-1)")
    shoot_service_networks: NetworkList = Field(default_factory=lambda: [ip_network("100.64.0.0/13")])
    shoot_pod_networks: NetworkList = Field(default_factory=lambda: [ip_network("100.96.0.0/11")])
    shoot_node_networks: NetworkList = Field(default_factory=list)
    seed_pod_network: OptionalNetwork = None
    pod_ip: IPAddressValue
    pod_ips: IPAddressList = Field(default_factory=list)

    # --- probing ----------------------------------------------------------
    probe_interval: Duration = Field(0.1, gt=0, le=10, description="seconds between probes of a healthy target")
    probe_burst_interval: Duration = Field(0.015, gt=0, le=10, description="seconds between probes once one is late")
    probe_dead_interval: Duration = Field(0.35, gt=0, le=60, description="silence after which a target is down")
    probe_min_lost: int = Field(12, ge=1, le=1000, description="unanswered probes also needed to call it down")
    probe_rise: int = Field(3, ge=1, le=100, description="consecutive answers to call a target up again")
    probe_late_after: Duration = Field(0.025, gt=0, le=10, description="a reply overdue by this much starts a burst")
    probe_stall_factor: float = Field(4.0, ge=1, le=100, description="after a late answer, silence must last this many times as long")
    probe_failover_hold: Duration = Field(1.5, ge=0, le=60, description="no target is called down this long after this node's bond lost or regained a slave or moved (0: off)")
    probe_stall_memory: Duration = Field(0.0, ge=0, le=86400, description="seconds a stalling path keeps its longer dead interval (0: off)")

    # --- routes -----------------------------------------------------------
    route_protocol: int = Field(118, ge=5, le=255, description="rtm_protocol marking routes this daemon owns")
    route_resync_interval: Duration = Field(10.0, gt=0, description="seconds between full route checks")

    # --- announcements ----------------------------------------------------
    announce_interval: Duration = Field(2.0, gt=0, le=60)
    announce_port: int = Field(5400, ge=1, le=65535)
    announce_all_pod_ips: bool = Field(False, description="send both pod IPs (hvdp1 form; not readable by vpn2)")
    announce_key_file: Path | None = Field(None, description="shared key: send the authenticated hvdp1 form")

    # --- service ----------------------------------------------------------
    http_host: str | None = None
    http_port: int = Field(8080, ge=0, le=65535)
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    @model_validator(mode="after")
    def _consistent(self) -> PathControllerSettings:
        if not (self.shoot_service_networks or self.shoot_pod_networks or self.shoot_node_networks):
            raise ValueError("SHOOT_SERVICE_NETWORKS, SHOOT_POD_NETWORKS, SHOOT_NODE_NETWORKS: all empty, nothing to route")
        if self.probe_burst_interval > self.probe_interval:
            raise ValueError("PROBE_BURST_INTERVAL: must not be longer than PROBE_INTERVAL")
        if self.probe_dead_interval <= self.probe_burst_interval:
            raise ValueError("PROBE_DEAD_INTERVAL: must be longer than PROBE_BURST_INTERVAL")
        families = [ip.version for ip in self.pod_ips]
        if len(families) != len(set(families)) or len(families) > 2:
            raise ValueError("POD_IPS: at most one IPv4 and one IPv6 address")
        if self.pod_ips and self.pod_ip not in self.pod_ips:
            raise ValueError(f"POD_IPS: does not contain POD_IP {self.pod_ip}")
        return self

    @property
    def plan(self) -> AddressPlan:
        return AddressPlan(self.vpn_network)

    @property
    def targets(self) -> list[IPv6Address]:
        return self.plan.shoot_clients(self.ha_vpn_clients)

    @property
    def all_pod_ips(self) -> list[IPAddress]:
        """POD_IP first, then the other family from POD_IPS."""
        return [self.pod_ip] + [ip for ip in self.pod_ips if ip != self.pod_ip]
