"""Settings of the tunnel-controller: vpn2's environment variables plus ours.

Durations accept a number of seconds (``4``, ``0.5``) or Go-style units
(``500ms``, ``4s``, ``10m``, ``1h``, ``1m30s``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from announcement import load_key
from bonding.config import VpnNetwork
from bonding.plan import DEFAULT_VPN_NETWORK, AddressPlan, parse_vpn_network
from daemonkit.config import Duration
from steering.config import SteeringSettings


class TunnelSettings(SteeringSettings):
    # --- vpn2's names ---------------------------------------------------------
    ha_vpn_clients: int = Field(
        2, ge=1, le=256,
        description="accepted and validated for vpn2 compatibility, not used (vpn2 misused it: see `HA_VPN_SERVERS`)",
    )
    vpn_network: VpnNetwork = Field(
        parse_vpn_network(DEFAULT_VPN_NETWORK),
        description="must be an IPv6 /96; defines the seed-client range senders must be in",
    )
    watchdog_window_size: int = Field(20, ge=1, le=10_000, description="receive events in the sliding window")
    watchdog_threshold: int = Field(
        10, ge=1,
        description="failures in the window that trigger the restart (at most `WATCHDOG_WINDOW_SIZE`; gardener sets 8)",
    )
    watchdog_cooldown: int = Field(20, ge=1, description="events ignored after a restart")
    # --- ours -------------------------------------------------------------------
    watchdog_timeout: Duration = Field(
        4.0, gt=0,
        description="no accepted announcement for this long = one failure (vpn2's read deadline)",
    )
    watchdog_grace: Duration = Field(30.0, ge=0, description="after start the watchdog ignores events this long")
    management_host: str = Field("127.0.0.1", description="OpenVPN management interface")
    management_port: int = Field(
        7505, ge=1, le=65535 - 16,
        description="port of server 0; server i listens on this port + i",
    )
    peer_expiry: Duration = Field(600.0, gt=0, description="a peer silent this long is removed (vpn2: 10 min)")
    max_peers: int = Field(
        256, ge=1, le=0xFFFF,
        description="peers (= tunnels) at most; further senders are refused (`peer-limit`)",
    )
    rate_limit_per_source: float = Field(5.0, gt=0, description="datagrams per second a sender may send, sustained")
    rate_limit_burst: int = Field(10, ge=1, description="datagrams a sender may send at once")
    announce_key_file: Path | None = Field(
        None,
        description="file with the shared key (≥ 16 bytes, outer whitespace ignored): accept only authenticated ones",
    )
    announce_max_age: Duration = Field(
        30.0, gt=0,
        description="authenticated form: allowed distance between its timestamp and our clock",
    )
    route_protocol: int = Field(
        119, ge=5, le=255,
        description="`rtm_protocol` of the back-routes (`ip route show proto 119`; the path-controller uses 118)",
    )
    tunnel_retry_min: Duration = Field(
        1.0, gt=0,
        description="first retry after a failed tunnel or route operation, doubling up to `TUNNEL_RETRY_MAX`",
    )
    tunnel_retry_max: Duration = Field(
        30.0, gt=0,
        description="longest retry interval (vpn2: fixed 30 s); at least `TUNNEL_RETRY_MIN`",
    )
    drain_seconds: Duration = Field(
        20.0, ge=0, le=3600,
        description="after SIGTERM: keep the tunnels serving and tell every kube-apiserver to send no new "
        "connection here for this long (the pod's OpenVPN clients must outlive it: preStop); 0: exit at once",
    )
    resync_interval: Duration = Field(60.0, gt=0, description="full comparison with the kernel this often")
    listen_timeout: Duration = Field(
        15.0, gt=0,
        description="wait this long for a usable bond0 address, then exit 1 (vpn2: 30 × 500 ms)",
    )
    http_host: str = Field("", description="listen address of `/metrics`, `/healthz`, `/readyz`; empty: all")
    http_port: int = Field(
        8080, ge=0, le=65535,
        description="port of `/metrics`, `/healthz`, `/readyz` (vpn2's readiness port)",
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        "info",
        description="JSON lines on stderr from this level up",
    )

    @field_validator("announce_key_file")
    @classmethod
    def _key_is_usable(cls, value: Path | None) -> Path | None:
        if value is not None:
            load_key(value)  # ValueError names the file and the problem
        return value

    @field_validator("announce_key_file", mode="before")
    @classmethod
    def _empty_is_none(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @model_validator(mode="after")
    def _consistent(self) -> TunnelSettings:
        if self.watchdog_threshold > self.watchdog_window_size:
            window = self.watchdog_window_size
            raise ValueError(f"WATCHDOG_THRESHOLD: {self.watchdog_threshold} exceeds WATCHDOG_WINDOW_SIZE={window}")
        if self.tunnel_retry_min > self.tunnel_retry_max:
            raise ValueError("TUNNEL_RETRY_MIN: must not exceed TUNNEL_RETRY_MAX")
        return self

    @property
    def plan(self) -> AddressPlan:
        return AddressPlan(self.vpn_network)

    def announce_key(self) -> bytes | None:
        return None if self.announce_key_file is None else load_key(self.announce_key_file)

    def management_ports(self) -> list[int]:
        """One per OpenVPN server (vpn2 iterated HA_VPN_CLIENTS here, which is a client count)."""
        return [self.management_port + i for i in range(self.ha_vpn_servers)]
