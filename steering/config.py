"""Settings of server steering, shared by both daemons' settings classes."""

from __future__ import annotations

from pydantic import Field

from daemonkit.config import Duration, EnvSettings


class SteeringSettings(EnvSettings):
    ha_vpn_servers: int = Field(2, ge=1, le=8, description="OpenVPN servers = taps `tap0`… of the bond")
    server_steering: bool = Field(
        True,
        description="choose the OpenVPN server of the bond from beacons (needs CAP_NET_RAW and split-tolerant "
        "bonds); `false`: the kernel alone, as vpn2",
    )
    steering_beacon_interval: Duration = Field(0.2, gt=0, le=5, description="seconds between beacons through each server")
    steering_dead_after: Duration = Field(
        0.6, gt=0, le=60, description="a peer not heard through a server this long is unreachable there"
    )
    steering_settle: Duration = Field(
        3.0, ge=0, le=600, description="seconds a better-placed server must last before a move back home or to the peers"
    )
