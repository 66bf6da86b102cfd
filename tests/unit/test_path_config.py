"""path-controller configuration: vpn2's variables, defaults, one-line errors with exit 2."""

import os
import subprocess
import sys
from ipaddress import ip_address, ip_network

import pytest

from path_controller.config import PathControllerSettings

VPN2_VARS = ("POD_IP", "POD_IPS", "VPN_NETWORK", "HA_VPN_CLIENTS", "SHOOT_SERVICE_NETWORKS", "SHOOT_POD_NETWORKS",
             "SHOOT_NODE_NETWORKS", "SEED_POD_NETWORK")


def run(**env):
    clean = {k: v for k, v in os.environ.items() if k not in VPN2_VARS and not k.startswith(("PROBE_", "ANNOUNCE_"))}
    clean.update({k: str(v) for k, v in env.items()})
    return subprocess.run([sys.executable, "-m", "path_controller"], env=clean, capture_output=True, text=True, timeout=30)


@pytest.mark.parametrize(
    ("env", "line"),
    [
        ({}, "POD_IP: required but not set"),
        ({"POD_IP": "10.0.0.300"}, "POD_IP: '10.0.0.300' is not an IP address"),
        ({"POD_IP": "10.0.0.1", "VPN_NETWORK": "fd00::/64"}, "VPN_NETWORK: must be a /96, got /64"),
        ({"POD_IP": "10.0.0.1", "HA_VPN_CLIENTS": "0"}, "HA_VPN_CLIENTS: Input should be greater than or equal to 1"),
        ({"POD_IP": "10.0.0.1", "SHOOT_POD_NETWORKS": "10.0.0.0/8,bogus"}, "SHOOT_POD_NETWORKS: 'bogus' is not an IP network in CIDR notation"),
        ({"POD_IP": "10.0.0.1", "SEED_POD_NETWORK": "10.0.0.0/33"}, "SEED_POD_NETWORK: '10.0.0.0/33' is not an IP network in CIDR notation"),
        ({"POD_IP": "10.0.0.1", "SHOOT_SERVICE_NETWORKS": "", "SHOOT_POD_NETWORKS": ""},
         "SHOOT_SERVICE_NETWORKS, SHOOT_POD_NETWORKS, SHOOT_NODE_NETWORKS: all empty, nothing to route"),
        ({"POD_IP": "10.0.0.1", "POD_IPS": "10.0.0.1,10.0.0.2"}, "POD_IPS: at most one IPv4 and one IPv6 address"),
        ({"POD_IP": "10.0.0.1", "POD_IPS": "10.0.0.2,fd00::2"}, "POD_IPS: does not contain POD_IP 10.0.0.1"),
        ({"POD_IP": "10.0.0.1", "PROBE_INTERVAL": "0"}, "PROBE_INTERVAL: Input should be greater than 0"),
        ({"POD_IP": "10.0.0.1", "PROBE_INTERVAL": "20s"}, "PROBE_INTERVAL: Input should be less than or equal to 10"),
        ({"POD_IP": "10.0.0.1", "PROBE_DEAD_INTERVAL": "350 ms"},
         "PROBE_DEAD_INTERVAL: '350 ms' is not a duration (e.g. 4, 500ms, 4s, 10m)"),
        ({"POD_IP": "10.0.0.1", "POD_IPS": "10.0.0.1, fd00::x"}, "POD_IPS: 'fd00::x' is not an IP address"),
        ({"POD_IP": "10.0.0.1", "PROBE_BURST_INTERVAL": "0.5"}, "PROBE_BURST_INTERVAL: must not be longer than PROBE_INTERVAL"),
        ({"POD_IP": "10.0.0.1", "ANNOUNCE_KEY_FILE": "/nonexistent/key"},
         "ANNOUNCE_KEY_FILE: cannot read key file /nonexistent/key: No such file or directory"),
        ({"POD_IP": "10.0.0.1", "HTTP_PORT": "http"}, "HTTP_PORT: Input should be a valid integer, unable to parse string as an integer"),
    ],
)
def test_invalid_config_one_line_exit_2(env, line):
    result = run(**env)
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines() == [f"path-controller: invalid configuration: {line}"]


def test_help():
    result = subprocess.run([sys.executable, "-m", "path_controller", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "environment variables" in result.stdout


def test_defaults_are_vpn2s(monkeypatch):
    for name in VPN2_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("POD_IP", "10.96.3.17")
    settings = PathControllerSettings()
    assert settings.shoot_service_networks == [ip_network("100.64.0.0/13")]
    assert settings.shoot_pod_networks == [ip_network("100.96.0.0/11")]
    assert settings.shoot_node_networks == []
    assert settings.seed_pod_network is None
    assert [str(t) for t in settings.targets] == ["fd8f:6d53:b97a:1::b:0", "fd8f:6d53:b97a:1::b:1"]
    assert (settings.announce_port, settings.announce_interval, settings.http_port) == (5400, 2.0, 8080)


def test_durations_take_go_units(monkeypatch):
    env = {"POD_IP": "10.96.3.17", "PROBE_INTERVAL": "200ms", "PROBE_DEAD_INTERVAL": "1s",
           "ROUTE_RESYNC_INTERVAL": "1m30s"}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = PathControllerSettings()
    assert (settings.probe_interval, settings.probe_dead_interval, settings.route_resync_interval) == (0.2, 1.0, 90.0)


def test_pod_ips_order(monkeypatch):
    monkeypatch.setenv("POD_IP", "fd00::5")
    monkeypatch.setenv("POD_IPS", "10.0.0.5,fd00::5")
    assert PathControllerSettings().all_pod_ips == [ip_address("fd00::5"), ip_address("10.0.0.5")]
