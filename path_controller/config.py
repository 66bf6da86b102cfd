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
    IPAddress,
    IPAddressList,
    IPAddressValue,
    NetworkList,
    OptionalNetwork,
)
from steering.config import SteeringSettings


class PathControllerSettings(SteeringSettings):
    # --- vpn2's variables -------------------------------------------------
    vpn_network: VpnNetwork = Field(
        parse_vpn_network(DEFAULT_VPN_NETWORK),
        description="the VPN's IPv6 /96; vpn-shoot j answers on `…::b:<j>`",
    )
    ha_vpn_clients: int = Field(2, ge=1, le=256, description="vpn-shoots to probe (`…::b:0` … `…::b:N-1`)")
    shoot_service_networks: NetworkList = Field(
        default_factory=lambda: [ip_network("100.64.0.0/13")],
        description="the shoot's service networks, routed via the primary vpn-shoot (comma list, IPv4 and/or IPv6)",
    )
    shoot_pod_networks: NetworkList = Field(
        default_factory=lambda: [ip_network("100.96.0.0/11")],
        description="the shoot's pod networks, routed likewise (comma list)",
    )
    shoot_node_networks: NetworkList = Field(
        default_factory=list,
        description="the shoot's node networks, routed likewise (comma list)",
    )
    seed_pod_network: OptionalNetwork = Field(
        None,
        description="the seed's pod network: when it overlaps a shoot network, IPv4 is NAT-mapped as in vpn2",
    )
    pod_ip: IPAddressValue = Field(
        description="the pod's IP (downward API `status.podIP`), announced to every vpn-shoot",
    )
    pod_ips: IPAddressList = Field(
        default_factory=list,
        description="the pod's IPs, dual-stack (downward API `status.podIPs`); must contain `POD_IP`",
    )

    # --- probing ----------------------------------------------------------
    probe_interval: Duration = Field(0.1, gt=0, le=10, description="seconds between probes of a healthy target")
    probe_burst_interval: Duration = Field(0.015, gt=0, le=10, description="seconds between probes once a reply is late")
    probe_dead_interval: Duration = Field(
        0.35, gt=0, le=60,
        description="seconds of silence before a target is down (raise it to tolerate TCP stalls from the first on)",
    )
    probe_min_lost: int = Field(12, ge=1, le=1000, description="unanswered probes also needed before a target is down")
    probe_rise: int = Field(3, ge=1, le=100, description="answers in a row before a down target is up")
    probe_late_after: Duration = Field(
        0.025, gt=0, le=10,
        description="seconds: a reply this late (or 2·SRTT+4·RTTVAR, at most 0.25 s) starts a burst",
    )
    probe_stall_factor: float = Field(
        4.0, ge=1, le=100,
        description="on a path that keeps stalling, silence must last this many times its longest stall",
    )
    probe_failover_hold: Duration = Field(
        1.5, ge=0, le=60,
        description="seconds no target is called down or left after a carrier change or failover of our bond (0: off)",
    )
    probe_stall_memory: Duration = Field(
        0.0, ge=0, le=86400,
        description="seconds a stalling path keeps its longer dead interval (0: stall memory off)",
    )

    # --- routes -----------------------------------------------------------
    route_protocol: int = Field(
        118, ge=5, le=255,
        description="`rtm_protocol` of the routes this daemon owns (`ip route show proto 118`)",
    )
    route_resync_interval: Duration = Field(10.0, gt=0, description="seconds between full route checks")

    # --- connection pinning -------------------------------------------------
    connection_pinning: bool = Field(
        True,
        description="bind each new connection to the vpn-shoot chosen when it starts, so a switch moves only new"
        " connections (nftables inet, conntrack, policy routing; where the kernel lacks them: one log line, off)",
    )
    path_mode: Literal["primary", "spread"] = Field(
        "primary",
        description="`primary`: new connections go to the primary; `spread`: each new connection to one of the"
        " healthy vpn-shoots, at random (needs connection pinning)",
    )
    pin_close_after: Duration = Field(
        1.5, gt=0, le=3600,
        description="seconds a vpn-shoot stays down before its pinned connections are closed (they error instead"
        " of hanging); a shorter stall leaves them to resume",
    )

    # --- announcements ----------------------------------------------------
    announce_interval: Duration = Field(
        2.0, gt=0, le=60,
        description="seconds between announcements (the first one at start)",
    )
    announce_port: int = Field(5400, ge=1, le=65535, description="UDP port of the vpn-shoots' tunnel-controllers")
    announce_all_pod_ips: bool = Field(
        False,
        description="send both pod IPs (`hvdp1` form; needs our tunnel-controller, vpn2's cannot read it)",
    )
    announce_key_file: Path | None = Field(
        None,
        description="file with the shared key (≥ 16 bytes): send the authenticated `hvdp1` form",
    )

    # --- service ----------------------------------------------------------
    http_host: str | None = Field(None, description="listen address of `/metrics`, `/healthz`, `/readyz`; unset: all")
    http_port: int = Field(8080, ge=0, le=65535, description="port of `/metrics`, `/healthz`, `/readyz`")
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        "info",
        description="JSON lines on stderr from this level up",
    )

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
