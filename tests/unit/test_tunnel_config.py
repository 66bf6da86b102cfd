"""tunnel-controller configuration: vpn2's variables, documented additions, one-line errors."""

import os
import subprocess
import sys
from ipaddress import IPv6Network

import pytest

from tunnel_controller.config import TunnelSettings

KEY = b"0123456789abcdef0123456789abcdef"


def run_daemon(**env):
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("HA_", "VPN_", "WATCHDOG_", "PEER_"))}
    clean.update({k: str(v) for k, v in env.items()})
    return subprocess.run(
        [sys.executable, "-m", "tunnel_controller"], env=clean, capture_output=True, text=True, timeout=30
    )


@pytest.mark.parametrize(
    ("env", "line"),
    [
        ({"VPN_NETWORK": "fd00::/64"}, "VPN_NETWORK: must be a /96, got /64"),
        ({"HA_VPN_CLIENTS": "zero"},
         "HA_VPN_CLIENTS: Input should be a valid integer, unable to parse string as an integer"),
        ({"WATCHDOG_WINDOW_SIZE": "0"}, "WATCHDOG_WINDOW_SIZE: Input should be greater than or equal to 1"),
        ({"WATCHDOG_THRESHOLD": "21"}, "WATCHDOG_THRESHOLD: 21 exceeds WATCHDOG_WINDOW_SIZE=20"),
        ({"WATCHDOG_COOLDOWN": "0"}, "WATCHDOG_COOLDOWN: Input should be greater than or equal to 1"),
        ({"PEER_EXPIRY": "ten minutes"}, "PEER_EXPIRY: 'ten minutes' is not a duration (e.g. 4, 500ms, 4s, 10m)"),
        ({"PEER_EXPIRY": "0"}, "PEER_EXPIRY: Input should be greater than 0"),
        ({"MAX_PEERS": "70000"}, "MAX_PEERS: Input should be less than or equal to 65535"),
        ({"ANNOUNCE_KEY_FILE": "/nonexistent/key"},
         "ANNOUNCE_KEY_FILE: cannot read key file /nonexistent/key: No such file or directory"),
        ({"TUNNEL_RETRY_MIN": "1m"}, "TUNNEL_RETRY_MIN: must not exceed TUNNEL_RETRY_MAX"),
        ({"LOG_LEVEL": "loud"}, "LOG_LEVEL: Input should be 'debug', 'info', 'warning' or 'error'"),
    ],
)
def test_invalid_config_is_one_line_naming_the_variable_and_exit_2(env, line):
    result = run_daemon(**env)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.splitlines() == [f"tunnel-controller: invalid configuration: {line}"]


def test_short_key_is_refused(tmp_path):
    short = tmp_path / "key"
    short.write_bytes(b"too short\n")
    result = run_daemon(ANNOUNCE_KEY_FILE=short)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"tunnel-controller: invalid configuration: ANNOUNCE_KEY_FILE: key file {short} holds 9 bytes; "
        "at least 16 are needed"
    ]


def test_defaults_match_vpn2(monkeypatch):
    for name in list(os.environ):
        if name.startswith(("HA_", "VPN_", "WATCHDOG_", "PEER_", "ANNOUNCE_")):
            monkeypatch.delenv(name)
    settings = TunnelSettings()
    assert settings.vpn_network == IPv6Network("fd8f:6d53:b97a:1::/96")
    assert (settings.watchdog_window_size, settings.watchdog_threshold, settings.watchdog_cooldown) == (20, 10, 20)
    assert settings.watchdog_timeout == 4.0  # vpn2's read deadline
    assert settings.peer_expiry == 600.0  # vpn2's expirationDuration
    assert settings.http_port == 8080
    assert settings.announce_key() is None  # vpn2's unauthenticated form by default
    # One management port per OpenVPN server, not per vpn-shoot.
    assert settings.management_ports() == [7505, 7506]


def test_gardener_env_and_our_additions(monkeypatch, tmp_path):
    key = tmp_path / "key"
    key.write_bytes(KEY + b"\n")
    for name, value in {
        "HA_VPN_CLIENTS": "2", "WATCHDOG_THRESHOLD": "8", "HA_VPN_SERVERS": "3", "PEER_EXPIRY": "1m30s",
        "WATCHDOG_TIMEOUT": "500ms", "ANNOUNCE_KEY_FILE": str(key), "MAX_PEERS": "1000",
    }.items():
        monkeypatch.setenv(name, value)
    settings = TunnelSettings()
    assert settings.watchdog_threshold == 8
    assert settings.management_ports() == [7505, 7506, 7507]
    assert (settings.peer_expiry, settings.watchdog_timeout) == (90.0, 0.5)
    assert settings.announce_key() == KEY
    assert settings.max_peers == 1000
