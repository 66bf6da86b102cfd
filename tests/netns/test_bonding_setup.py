"""``bonding setup`` against a real kernel: read back through netlink what it made."""

from __future__ import annotations

import json
import socket
from ipaddress import IPv6Address, IPv6Interface, ip_network

import pytest
from pyroute2.netlink.rtnl.ifaddrmsg import IFA_F_NODAD, IFA_F_PERMANENT

from bonding.plan import AddressPlan, seed_client_index_for_pod
from netlink_adapter.ip6tnl import IP6_TNL_F_IGN_ENCAP_LIMIT
from netlink_adapter.links import is_up, link_by_name
from netlink_adapter.routes import dump_routes
from tests.netns import nsutil

PLAN = AddressPlan.from_text()
SEED_POD = "kube-apiserver-7d9f8b6c5d-x2x4k"
SEED_ADDRESS = PLAN.seed_client(seed_client_index_for_pod(SEED_POD))


async def link(ipr, name):
    found = await link_by_name(ipr, name)
    assert found is not None, f"no {name}"
    return found


def info_data(msg):
    return msg.get_nested("IFLA_LINKINFO", "IFLA_INFO_DATA")


def setup_log(result) -> dict:
    """The 'bond network ready' log event of a run."""
    for line in result.stderr.splitlines():
        entry = json.loads(line)
        if entry["msg"] == "bond network ready":
            return entry
    raise AssertionError(f"no 'bond network ready' event in: {result.stderr}")


async def global_addresses(ipr, index):
    return [
        (IPv6Interface((a.get("IFA_ADDRESS"), a["prefixlen"])), a.get("IFA_FLAGS"))
        async for a in await ipr.addr("dump", index=index, family=socket.AF_INET6)
        if a["scope"] == 0
    ]


async def assert_bond(ipr, address: IPv6Address, mode: str = "active-backup", split_tolerant: bool = True):
    tap0, tap1, bond = [await link(ipr, name) for name in ("tap0", "tap1", "bond0")]
    for tap in (tap0, tap1):
        data = info_data(tap)
        assert tap.get_nested("IFLA_LINKINFO", "IFLA_INFO_KIND") == "tun"
        assert data.get("IFLA_TUN_TYPE") == 2  # tap
        assert data.get("IFLA_TUN_PERSIST") == 1
        assert tap.get("IFLA_MASTER") == bond["index"]
        assert tap.get("IFLA_CARRIER") == 0  # nobody attached yet
    data = info_data(bond)
    assert bond.get_nested("IFLA_LINKINFO", "IFLA_INFO_KIND") == "bond"
    assert is_up(bond), "bond0 is up"
    assert data.get("IFLA_BOND_MIIMON") == 100
    if mode == "active-backup":
        assert data.get("IFLA_BOND_MODE") == 1
        if split_tolerant:  # every slave carries the bond's MAC and passes frames up
            assert data.get("IFLA_BOND_FAIL_OVER_MAC") == 0  # none
            assert data.get("IFLA_BOND_ALL_SLAVES_ACTIVE") == 1
            assert tap0.get("IFLA_ADDRESS") == tap1.get("IFLA_ADDRESS") == bond.get("IFLA_ADDRESS")
        else:  # vpn2's
            assert data.get("IFLA_BOND_FAIL_OVER_MAC") == 1  # active
            assert data.get("IFLA_BOND_ALL_SLAVES_ACTIVE") == 0
        assert data.get("IFLA_BOND_USE_CARRIER") == 1
        assert data.get("IFLA_BOND_PRIMARY") == tap0["index"]
        assert data.get("IFLA_BOND_NUM_PEER_NOTIF") == 5
    else:
        assert data.get("IFLA_BOND_MODE") == 0
    on_bond = [(IPv6Interface(f"{address}/104"), IFA_F_NODAD | IFA_F_PERMANENT)]
    assert await global_addresses(ipr, bond["index"]) == on_bond
    return bond


async def assert_tunnel(ipr, name, local, remote):
    tnl = await link(ipr, name)
    data = info_data(tnl)
    assert tnl.get_nested("IFLA_LINKINFO", "IFLA_INFO_KIND") == "ip6tnl"
    assert IPv6Address(data.get("IFLA_IP6TNL_LOCAL")) == local
    assert IPv6Address(data.get("IFLA_IP6TNL_REMOTE")) == remote
    assert data.get("IFLA_IP6TNL_PROTO") == 0  # "any": IPv4 and IPv6 inside
    assert data.get("IFLA_IP6TNL_FLAGS") & IP6_TNL_F_IGN_ENCAP_LIMIT  # encaplimit none
    assert is_up(tnl), f"{name} is up"
    return tnl


async def test_seed_side(netns, ipr_factory, run_bonding):
    result = run_bonding(netns, POD_NAME=SEED_POD, HA_VPN_SERVERS=2, HA_VPN_CLIENTS=2)
    assert result.returncode == 0, result.stderr
    ipr = await ipr_factory(netns)
    await assert_bond(ipr, SEED_ADDRESS)
    await assert_tunnel(ipr, "bond0-ip6tnl0", SEED_ADDRESS, IPv6Address("fd8f:6d53:b97a:1::b:0"))
    await assert_tunnel(ipr, "bond0-ip6tnl1", SEED_ADDRESS, IPv6Address("fd8f:6d53:b97a:1::b:1"))
    assert nsutil.sysctl_get(netns, "net.ipv4.conf.all.rp_filter") == "0"
    assert nsutil.sysctl_get(netns, "net.ipv4.conf.default.log_martians") == "0"
    assert nsutil.sysctl_get(netns, "net.ipv4.tcp_rmem") == "65536 12582912 16777216"
    assert nsutil.sysctl_get(netns, "net.ipv6.conf.all.disable_ipv6") == "0"
    assert nsutil.sysctl_get(netns, "net.ipv6.neigh.bond0.ucast_solicit") == "6"
    assert nsutil.sysctl_get(netns, "net.ipv6.neigh.bond0.mcast_resolicit") == "3"
    assert nsutil.sysctl_get(netns, "net.ipv6.neigh.bond0.retrans_time_ms") == "200"
    assert setup_log(result)["created_links"] == ["tap0", "tap1", "bond0", "bond0-ip6tnl0", "bond0-ip6tnl1"]


async def test_shoot_side(netns, ipr_factory, run_bonding):
    result = run_bonding(netns, IS_SHOOT_CLIENT="true", POD_NAME="vpn-shoot-1")
    assert result.returncode == 0, result.stderr
    ipr = await ipr_factory(netns)
    await assert_bond(ipr, IPv6Address("fd8f:6d53:b97a:1::b:1"))
    names = {msg.get("IFLA_IFNAME") async for msg in await ipr.link("dump")}
    assert not {n for n in names if n.startswith("bond0-ip6tnl")}, "no seed-side tunnels on the shoot side"
    assert nsutil.sysctl_get(netns, "net.ipv4.ip_forward") == "1"
    assert nsutil.sysctl_get(netns, "net.ipv6.conf.all.forwarding") == "1"
    assert nsutil.sysctl_get(netns, "net.ipv4.ip_local_port_range") == "1024 65535"


async def test_vpn2_mac_handling_when_not_split_tolerant(netns, ipr_factory, run_bonding):
    result = run_bonding(netns, POD_NAME=SEED_POD, BOND_SPLIT_TOLERANT="false")
    assert result.returncode == 0, result.stderr
    await assert_bond(await ipr_factory(netns), SEED_ADDRESS, split_tolerant=False)
    # Back: the bond is rebuilt (fail_over_mac cannot change with slaves), split-tolerant again.
    result = run_bonding(netns, POD_NAME=SEED_POD)
    assert result.returncode == 0, result.stderr
    await assert_bond(await ipr_factory(netns), SEED_ADDRESS)


async def test_balance_rr(netns, ipr_factory, run_bonding):
    result = run_bonding(netns, IS_SHOOT_CLIENT="true", POD_NAME="vpn-shoot-0", BONDING_MODE="balance-rr")
    assert result.returncode == 0, result.stderr
    ipr = await ipr_factory(netns)
    await assert_bond(ipr, IPv6Address("fd8f:6d53:b97a:1::b:0"), mode="balance-rr")


async def test_second_run_changes_nothing_and_keeps_routes(netns, ipr_factory, run_bonding):
    env = dict(POD_NAME=SEED_POD)
    assert run_bonding(netns, **env).returncode == 0
    ipr = await ipr_factory(netns)
    before = {n: (await link(ipr, n))["index"] for n in ("tap0", "tap1", "bond0", "bond0-ip6tnl0", "bond0-ip6tnl1")}
    await ipr.route("replace", dst="10.96.0.0/11", oif=before["bond0-ip6tnl0"])

    second = run_bonding(netns, **env)
    assert second.returncode == 0, second.stderr
    event = setup_log(second)
    assert (event["created_links"], event["replaced_links"], event["adjusted_settings"]) == ([], [], [])
    after = {n: (await link(ipr, n))["index"] for n in before}
    assert after == before, "nothing was recreated"
    routes = [r for r in await dump_routes(ipr) if r.dst == ip_network("10.96.0.0/11")]
    assert [r.oif for r in routes] == [before["bond0-ip6tnl0"]]


async def test_second_run_repairs_drift(netns, ipr_factory, run_bonding):
    env = dict(POD_NAME=SEED_POD)
    assert run_bonding(netns, **env).returncode == 0
    ipr = await ipr_factory(netns)
    bond = await link(ipr, "bond0")
    await ipr.link("set", index=bond["index"], kind="bond", bond_miimon=0)
    await ipr.addr("del", index=bond["index"], address=str(SEED_ADDRESS), prefixlen=104)
    await ipr.addr("add", index=bond["index"], address="fd8f:6d53:b97a:1::a:9999", prefixlen=104)
    await ipr.link("del", index=(await link(ipr, "bond0-ip6tnl1"))["index"])
    tap1 = await link(ipr, "tap1")
    await ipr.link("set", index=tap1["index"], master=0)
    await ipr.link("set", index=(await link(ipr, "bond0-ip6tnl0"))["index"], state="down")

    result = run_bonding(netns, **env)
    assert result.returncode == 0, result.stderr
    await assert_bond(ipr, SEED_ADDRESS)
    await assert_tunnel(ipr, "bond0-ip6tnl0", SEED_ADDRESS, IPv6Address("fd8f:6d53:b97a:1::b:0"))
    await assert_tunnel(ipr, "bond0-ip6tnl1", SEED_ADDRESS, IPv6Address("fd8f:6d53:b97a:1::b:1"))


async def test_tunnel_with_wrong_remote_is_replaced(netns, ipr_factory, run_bonding):
    assert run_bonding(netns, POD_NAME=SEED_POD).returncode == 0
    ipr = await ipr_factory(netns)
    await ipr.link("del", index=(await link(ipr, "bond0-ip6tnl0"))["index"])
    await ipr.link(
        "add", ifname="bond0-ip6tnl0", kind="ip6tnl", ip6tnl_local=str(SEED_ADDRESS),
        ip6tnl_remote="fd8f:6d53:b97a:1::b:7", ip6tnl_proto=0,
    )
    result = run_bonding(netns, POD_NAME=SEED_POD)
    assert result.returncode == 0, result.stderr
    assert setup_log(result)["replaced_links"] == ["bond0-ip6tnl0"]
    await assert_tunnel(ipr, "bond0-ip6tnl0", SEED_ADDRESS, IPv6Address("fd8f:6d53:b97a:1::b:0"))


async def test_explicit_seed_client_index(netns, ipr_factory, run_bonding):
    result = run_bonding(netns, SEED_CLIENT_INDEX=0x1234)
    assert result.returncode == 0, result.stderr
    ipr = await ipr_factory(netns)
    await assert_bond(ipr, IPv6Address("fd8f:6d53:b97a:1::a:1234"))


def bond_monitor(ns: str) -> dict:
    """The bond's monitor settings as iproute2 decodes them (pyroute2 0.9 lacks
    ns_ip6_target and arp_missed_max; the code under test adds them, so an
    independent decoder checks it)."""
    shown = json.loads(nsutil.run_in(ns, ["ip", "-j", "-d", "link", "show", "bond0"]).stdout)[0]
    data = shown["linkinfo"]["info_data"]
    return {
        "miimon": data["miimon"],
        "arp_interval": data["arp_interval"],
        "arp_validate": data["arp_validate"],
        "missed_max": data["arp_missed_max"],
        "targets": sorted(data.get("ns_ip6_target", [])),
    }


@pytest.mark.parametrize("side", ["seed", "shoot"])
async def test_ns_monitor_opt_in(netns, ipr_factory, run_bonding, side):
    env = {"BOND_MONITOR": "ns", "BOND_NS_INTERVAL_MS": 150, "BOND_NS_MISSED_MAX": 4}
    if side == "shoot":
        env.update(IS_SHOOT_CLIENT="true", POD_NAME="vpn-shoot-0")
        targets = ["fd8f:6d53:b97a:1::b:1"]
    else:
        env.update(POD_NAME=SEED_POD)
        targets = ["fd8f:6d53:b97a:1::b:0", "fd8f:6d53:b97a:1::b:1"]
    result = run_bonding(netns, **env)
    assert result.returncode == 0, result.stderr
    ipr = await ipr_factory(netns)
    assert bond_monitor(netns) == {
        "miimon": 0, "arp_interval": 150, "arp_validate": None, "missed_max": 4, "targets": targets,
    }
    index = (await link(ipr, "bond0"))["index"]

    again = run_bonding(netns, **env)
    assert again.returncode == 0, again.stderr
    event = setup_log(again)
    assert (event["created_links"], event["replaced_links"], event["adjusted_settings"]) == ([], [], [])
    assert (await link(ipr, "bond0"))["index"] == index


async def test_ns_monitor_explicit_targets_and_back(netns, ipr_factory, run_bonding):
    env = dict(
        POD_NAME=SEED_POD, BOND_MONITOR="ns", BOND_NS_VALIDATE="all",
        BOND_NS_TARGETS="fd8f:6d53:b97a:1::b:0, fd8f:6d53:b97a:1::a:1",
    )
    assert run_bonding(netns, **env).returncode == 0
    ipr = await ipr_factory(netns)
    monitor = bond_monitor(netns)
    assert monitor["targets"] == ["fd8f:6d53:b97a:1::a:1", "fd8f:6d53:b97a:1::b:0"]
    assert monitor["arp_validate"] == "all"
    # Back to carrier sensing: the monitor is switched off in place.
    index = (await link(ipr, "bond0"))["index"]
    result = run_bonding(netns, POD_NAME=SEED_POD)
    assert result.returncode == 0, result.stderr
    assert setup_log(result)["adjusted_settings"] == ["bond0"]
    monitor = bond_monitor(netns)
    assert (monitor["miimon"], monitor["arp_interval"], monitor["targets"]) == (100, 0, [])
    assert (await link(ipr, "bond0"))["index"] == index


async def test_invalid_config_changes_nothing(netns, ipr_factory, run_bonding):
    result = run_bonding(netns, POD_NAME=SEED_POD, VPN_NETWORK="fd8f:6d53:b97a:1::/64")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == ["bonding: invalid configuration: VPN_NETWORK: must be a /96, got /64"]
    ipr = await ipr_factory(netns)
    names = {msg.get("IFLA_IFNAME") async for msg in await ipr.link("dump")}
    assert names == {"lo", "ip6tnl0"}
