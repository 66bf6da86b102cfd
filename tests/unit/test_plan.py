"""The address plan, with vpn2's own vectors (pkg/network/ip_test.go)."""

import hashlib
from ipaddress import IPv6Address, IPv6Network

import pytest

from bonding.plan import (
    AddressPlan,
    parse_vpn_network,
    seed_client_index_for_pod,
    seed_tunnel_name,
    shoot_client_index_for_pod,
    shoot_tunnel_name,
)

PLAN = AddressPlan.from_text("fd8f:6d53:b97a:1::/96")


def test_shoot_clients():
    assert PLAN.shoot_client(0) == IPv6Address("fd8f:6d53:b97a:1::b:0")
    assert PLAN.shoot_client(1) == IPv6Address("fd8f:6d53:b97a:1::b:1")
    assert PLAN.shoot_clients(2) == [IPv6Address("fd8f:6d53:b97a:1::b:0"), IPv6Address("fd8f:6d53:b97a:1::b:1")]
    assert str(PLAN.on_bond(PLAN.shoot_client(1))) == "fd8f:6d53:b97a:1::b:1/104"


def test_bond_network_is_a_104_that_holds_every_peer():
    assert PLAN.bond_network == IPv6Network("fd8f:6d53:b97a:1::/104")
    assert PLAN.shoot_client(255) in PLAN.bond_network
    assert PLAN.seed_client(0xFFFF) in PLAN.bond_network
    assert PLAN.server_pool(0).network_address not in PLAN.bond_network


def test_seed_clients():
    assert PLAN.seed_client(1) == IPv6Address("fd8f:6d53:b97a:1::a:1")
    assert PLAN.seed_client(0x36C3) == IPv6Address("fd8f:6d53:b97a:1::a:36c3")
    assert PLAN.seed_client(0xFFFF) == IPv6Address("fd8f:6d53:b97a:1::a:ffff")
    for bad in (0, 0x10000, -1):
        with pytest.raises(ValueError):
            PLAN.seed_client(bad)


def test_server_pools():
    assert PLAN.server_pool(0) == IPv6Network("fd8f:6d53:b97a:1::100:0/112")
    assert PLAN.server_pool(1) == IPv6Network("fd8f:6d53:b97a:1::101:0/112")


def test_other_vpn_network():
    plan = AddressPlan.from_text("fd00:1:2:3::/96")
    assert plan.shoot_client(1) == IPv6Address("fd00:1:2:3::b:1")
    assert plan.seed_client(0xA) == IPv6Address("fd00:1:2:3::a:a")
    assert plan.server_pool(1) == IPv6Network("fd00:1:2:3::101:0/112")


@pytest.mark.parametrize("text", ["fd8f:6d53:b97a:1::/64", "fd8f:6d53:b97a:1::/104", "10.0.0.0/8", "nonsense", ""])
def test_vpn_network_must_be_an_ipv6_96(text):
    with pytest.raises(ValueError):
        parse_vpn_network(text)


def test_host_bits_are_dropped_as_in_vpn2():
    assert parse_vpn_network("fd8f:6d53:b97a:1::5/96") == IPv6Network("fd8f:6d53:b97a:1::/96")


def test_tunnel_names():
    assert seed_tunnel_name(0) == "bond0-ip6tnl0"
    assert seed_tunnel_name(1) == "bond0-ip6tnl1"
    assert shoot_tunnel_name(IPv6Address("fd8f:6d53:b97a:1::a:36c3")) == "bond0ip6tnl36c3"
    assert shoot_tunnel_name(IPv6Address("fd8f:6d53:b97a:1::a:1")) == "bond0ip6tnl0001"
    assert len(shoot_tunnel_name(PLAN.seed_client(0xFFFF))) == 15  # IFNAMSIZ - 1


def test_classify_addresses():
    assert PLAN.seed_client_index(IPv6Address("fd8f:6d53:b97a:1::a:36c3")) == 0x36C3
    assert PLAN.seed_client_index(IPv6Address("fd8f:6d53:b97a:1::a:0")) is None
    assert PLAN.seed_client_index(IPv6Address("fd8f:6d53:b97a:1::b:1")) is None
    assert PLAN.seed_client_index(IPv6Address("fd8f:6d53:b97a:2::a:1")) is None  # other network
    assert PLAN.seed_client_index(IPv6Address("fd8f:6d53:b97a:1::1:a:1")) is None
    assert PLAN.shoot_client_index(IPv6Address("fd8f:6d53:b97a:1::b:1")) == 1
    assert PLAN.shoot_client_index(IPv6Address("fd8f:6d53:b97a:1::a:1")) is None


def test_seed_index_from_pod_name():
    # Documented: first four bytes of SHA-256(name), big-endian, mod 65535, plus 1.
    name = "kube-apiserver-7d9f8b6c5d-x2x4k"
    expected = int.from_bytes(hashlib.sha256(name.encode()).digest()[:4], "big") % 0xFFFF + 1
    assert seed_client_index_for_pod(name) == expected
    assert seed_client_index_for_pod(name) == seed_client_index_for_pod(name)
    with pytest.raises(ValueError):
        seed_client_index_for_pod("")


def test_seed_index_spreads_like_chance():
    names = [f"kube-apiserver-7d9f8b6c5d-{i:05x}" for i in range(2000)]
    indexes = [seed_client_index_for_pod(n) for n in names]
    assert all(1 <= i <= 0xFFFF for i in indexes)
    # 2000 draws from 65535 values collide about 30 times by chance.
    assert len(indexes) - len(set(indexes)) < 60


def test_shoot_index_from_pod_name():
    assert shoot_client_index_for_pod("vpn-shoot-0") == 0
    assert shoot_client_index_for_pod("vpn-shoot-1") == 1
    for bad in ("vpn-shoot", "vpn-shoot-x", "vpn-shoot-256"):
        with pytest.raises(ValueError):
            shoot_client_index_for_pod(bad)
