"""``bonding`` configuration: vpn2's variables, one-line errors, exit 2."""

import os
import subprocess
import sys
from ipaddress import IPv6Address

import pytest

from bonding.config import BondingSettings


def run_plan(**env):
    clean = {k: v for k, v in os.environ.items() if k not in ("POD_NAME", "IS_SHOOT_CLIENT", "VPN_NETWORK")}
    clean.update({k: str(v) for k, v in env.items()})
    return subprocess.run(
        [sys.executable, "-m", "bonding", "plan"], env=clean, capture_output=True, text=True, timeout=30
    )


@pytest.mark.parametrize(
    ("env", "line"),
    [
        ({}, "bonding: invalid configuration: POD_NAME: required on the seed side unless SEED_CLIENT_INDEX is set"),
        ({"POD_NAME": "x", "VPN_NETWORK": "fd00::/64"}, "bonding: invalid configuration: VPN_NETWORK: must be a /96, got /64"),
        ({"POD_NAME": "x", "VPN_NETWORK": "10.0.0.0/8"}, "bonding: invalid configuration: VPN_NETWORK: must be an IPv6 network, got '10.0.0.0/8'"),
        ({"POD_NAME": "x", "BONDING_MODE": "802.3ad"}, "bonding: invalid configuration: BONDING_MODE: Input should be 'active-backup' or 'balance-rr'"),
        ({"POD_NAME": "x", "HA_VPN_SERVERS": "0"}, "bonding: invalid configuration: HA_VPN_SERVERS: Input should be greater than or equal to 1"),
        ({"IS_SHOOT_CLIENT": "true", "POD_NAME": "vpn-shoot"}, "bonding: invalid configuration: POD_NAME: pod name 'vpn-shoot' does not end in -<index>"),
        ({"SEED_CLIENT_INDEX": "70000"}, "bonding: invalid configuration: SEED_CLIENT_INDEX: Input should be less than or equal to 65535"),
        ({"POD_NAME": "x", "BOND_NS_TARGETS": "fd00::1,nope"}, "bonding: invalid configuration: BOND_NS_TARGETS: 'nope' is not an IPv6 address"),
    ],
)
def test_invalid_config_is_one_line_and_exit_2(env, line):
    result = run_plan(**env)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.splitlines() == [line]


def test_plan_of_a_seed_pod():
    result = run_plan(POD_NAME="kube-apiserver-0", HA_VPN_CLIENTS=3)
    assert result.returncode == 0, result.stderr
    assert '"bond0-ip6tnl2": "fd8f:6d53:b97a:1::b:2"' in result.stdout


def test_settings_defaults_match_vpn2(monkeypatch):
    monkeypatch.setenv("POD_NAME", "vpn-shoot-1")
    monkeypatch.setenv("IS_SHOOT_CLIENT", "true")
    settings = BondingSettings()
    assert (settings.ha_vpn_servers, settings.ha_vpn_clients, settings.bonding_mode) == (2, 2, "active-backup")
    assert settings.own_address == IPv6Address("fd8f:6d53:b97a:1::b:1")
    assert settings.bond_monitor == "carrier"
    assert settings.ns_targets == [IPv6Address("fd8f:6d53:b97a:1::b:0")]
