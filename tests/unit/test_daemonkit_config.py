"""The value types every settings class shares: Duration and comma-separated lists."""

from ipaddress import IPv4Address, IPv6Address, ip_network

import pytest
from pydantic import Field

from bonding.config import BondingSettings
from daemonkit.config import (
    CommaList,
    Duration,
    EnvSettings,
    IPAddressList,
    IPv6AddressList,
    NetworkList,
    comma_list,
    is_duration,
    load_or_exit,
    parse_duration,
)
from path_controller.config import PathControllerSettings
from tunnel_controller.config import TunnelSettings

STEERING = ("steering_beacon_interval", "steering_dead_after", "steering_settle")
# Every duration setting of every daemon; a new one that is a bare float fails the sweep below.
DURATIONS = {
    PathControllerSettings: {
        "probe_interval", "probe_burst_interval", "probe_dead_interval", "probe_late_after",
        "probe_failover_hold", "probe_stall_memory", "route_resync_interval", "announce_interval", "pin_close_after",
        *STEERING,
    },
    TunnelSettings: {
        "watchdog_timeout", "watchdog_grace", "peer_expiry", "announce_max_age", "tunnel_retry_min",
        "tunnel_retry_max", "resync_interval", "listen_timeout", "drain_seconds", *STEERING,
    },
    BondingSettings: set(),  # BOND_NS_INTERVAL_MS stays an integer of ms, as the kernel's arp_interval
}
REQUIRED = {PathControllerSettings: {"POD_IP": "10.0.0.1"}, TunnelSettings: {}, BondingSettings: {"POD_NAME": "x"}}


@pytest.mark.parametrize(("text", "seconds"), [("4", 4.0), ("0.5", 0.5), ("500ms", 0.5), ("4s", 4.0),
                                                ("10m", 600.0), ("1h", 3600.0), ("1m30s", 90.0), (" 2s ", 2.0),
                                                ("1.5s", 1.5), ("0", 0.0)])
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "s", "4x", "4 s", "-1s", "1s2", "nan", "inf", "1d"])
def test_bad_durations(text):
    with pytest.raises(ValueError, match="is not a duration"):
        parse_duration(text)


def test_numbers_pass_through():
    assert parse_duration(0.25) == 0.25


def test_the_duration_settings_are_durations():
    for settings_class, expected in DURATIONS.items():
        found = {name for name, field in settings_class.model_fields.items() if is_duration(field)}
        assert found == expected, settings_class.__name__


CASES = [pytest.param(cls, name, id=name) for cls, names in DURATIONS.items() for name in sorted(names)]


def _clean_env(monkeypatch, settings_class):
    for name in settings_class.model_fields:
        monkeypatch.delenv(name.upper(), raising=False)
    for name, value in REQUIRED[settings_class].items():
        monkeypatch.setenv(name, value)


@pytest.mark.parametrize(("settings_class", "name"), CASES)
def test_every_duration_setting_takes_units(monkeypatch, settings_class, name):
    _clean_env(monkeypatch, settings_class)
    default = settings_class.model_fields[name].default
    # Its default written in ms (or in s when whole): valid whatever the bounds and cross-checks.
    text = f"{default:g}s" if default == int(default) else f"{round(default * 1000)}ms"
    monkeypatch.setenv(name.upper(), text)
    assert getattr(settings_class(), name) == pytest.approx(default)
    monkeypatch.setenv(name.upper(), str(default))
    assert getattr(settings_class(), name) == default


@pytest.mark.parametrize(("settings_class", "name"), CASES)
def test_every_bad_duration_is_one_line_naming_the_variable_and_exit_2(monkeypatch, capsys, settings_class, name):
    _clean_env(monkeypatch, settings_class)
    monkeypatch.setenv(name.upper(), "soon")
    with pytest.raises(SystemExit) as exited:
        load_or_exit(settings_class, "prog")
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.splitlines() == [
        f"prog: invalid configuration: {name.upper()}: 'soon' is not a duration (e.g. 4, 500ms, 4s, 10m)"
    ]


class Example(EnvSettings):
    timeout: Duration = Field(1.0, gt=0, le=60)
    networks: NetworkList = Field(default_factory=list)
    addresses: IPAddressList = Field(default_factory=list)
    targets: IPv6AddressList = Field(default_factory=list)
    names: CommaList = Field(default_factory=list)


def example(monkeypatch, **env) -> Example:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return Example()


def example_error(monkeypatch, capsys, **env) -> str:
    with pytest.raises(SystemExit) as exited:
        load_or_exit(lambda: example(monkeypatch, **env), "prog")
    assert exited.value.code == 2
    (line,) = capsys.readouterr().err.splitlines()
    return line.removeprefix("prog: invalid configuration: ")


def test_bounds_apply_to_the_seconds(monkeypatch, capsys):
    assert example_error(monkeypatch, capsys, TIMEOUT="2m") == "TIMEOUT: Input should be less than or equal to 60"
    assert example_error(monkeypatch, capsys, TIMEOUT="0ms") == "TIMEOUT: Input should be greater than 0"


def test_lists_from_the_environment(monkeypatch):
    settings = example(monkeypatch, NETWORKS=" 10.0.0.1/16 ,, fd00::/64,", ADDRESSES="10.0.0.1, fd00::1",
                       TARGETS="fd00::1,fd00::2", NAMES="a, b ,,c")
    assert settings.networks == [ip_network("10.0.0.0/16"), ip_network("fd00::/64")]  # host bits dropped, as vpn2
    assert settings.addresses == [IPv4Address("10.0.0.1"), IPv6Address("fd00::1")]
    assert settings.targets == [IPv6Address("fd00::1"), IPv6Address("fd00::2")]
    assert settings.names == ["a", "b", "c"]


def test_empty_list(monkeypatch):
    assert example(monkeypatch, NETWORKS=" , ").networks == []


@pytest.mark.parametrize(
    ("env", "line"),
    [
        ({"NETWORKS": "10.0.0.0/8, bogus"}, "NETWORKS: 'bogus' is not an IP network in CIDR notation"),
        ({"ADDRESSES": "10.0.0.300"}, "ADDRESSES: '10.0.0.300' is not an IP address"),
        ({"TARGETS": "fd00::1,10.0.0.1"}, "TARGETS: '10.0.0.1' is not an IPv6 address"),
    ],
)
def test_a_bad_item_is_named(monkeypatch, capsys, env, line):
    assert example_error(monkeypatch, capsys, **env) == line


def test_comma_list_is_generic():
    parse = comma_list(int, "a whole number")
    assert parse(" 1, 2,,3 ") == [1, 2, 3]
    assert parse([4]) == [4], "non-strings (defaults) pass through"
    with pytest.raises(ValueError, match="^'x' is not a whole number$"):
        parse("1, x")
