"""The pinning ruleset as data: marks, tables, rule order, and reading a predecessor's choices back."""

from ipaddress import ip_network

import pytest

from netlink_adapter.nft_expressions import u32
from path_controller.pinning_rules import CHAINS, CHAINS_OF, PinningConfig, PinningState, adopted_state, render

NETWORKS = (ip_network("100.64.0.0/13"), ip_network("fd00:64::/108"))


def comments(rules) -> list[str]:
    return [comment for _, comment in rules]


def test_marks_and_tables():
    config = PinningConfig()
    assert [config.mark_of(j) for j in (0, 1, 14)] == [0x100000, 0x200000, 0xF00000]
    assert config.max_targets == 15 and config.table_of(2) == 102
    with pytest.raises(ValueError, match="room for 0..14"):
        config.mark_of(15)
    narrow = PinningConfig(mark_mask=0x3 << 8)
    assert [narrow.mark_of(j) for j in (0, 1, 2)] == [0x100, 0x200, 0x300]


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"mark_mask": 0x00F0F000}, "one run of set bits"),
        ({"mark_mask": 0}, "one run of set bits"),
        ({"mark_mask": 0x00100000}, "room for 1 vpn-shoot"),
        ({"chain_priority": -150}, "after NAT"),
    ],
)
def test_bad_settings_name_the_problem(settings, message):
    with pytest.raises(ValueError, match=message):
        PinningConfig(**settings)


def all_comments(rules) -> list[str]:
    return [comment for chain in rules.chains.values() for _, comment in chain]


def test_the_chains():
    state = PinningState(NETWORKS, frozenset({0, 1}), (1,), main_table=1, refused=frozenset({2}))
    chains = render(state, PinningConfig()).chains
    assert comments(chains["route"]) == [
        "refused vpn-shoots",  # first: a failed re-route would drop the packet before later rules
        "shoot network 100.64.0.0/13",
        "shoot network fd00:64::/108",
        "pinned connections",
    ]
    assert comments(chains["refuse"]) == ["refuse vpn-shoot 2: tcp reset", "refuse vpn-shoot 2: admin-prohibited"]
    assert comments(chains["classify"]) == [
        "not a new connection", "not tcp: follows the main table", "decided at its first packet", "choose",
    ]
    every_protocol = render(state, PinningConfig(tcp_only=False)).chains
    assert comments(every_protocol["classify"]) == ["not a new connection", "decided at its first packet", "choose"]
    assert comments(chains["new-connections"]) == ["new connections: vpn-shoot 1"]
    assert comments(chains["pin"]) == ["on the main table's path", "pinned to vpn-shoot 0", "pinned to vpn-shoot 1"]
    assert comments(chains["main-table"]) == ["main table's vpn-shoot 1: no re-route"]
    assert render(state, PinningConfig()).spread == {}


def test_each_kind_of_change_has_its_chain():
    assert set(CHAINS_OF) == set(PinningState.__dataclass_fields__)
    assert {chain for chains in CHAINS_OF.values() for chain in chains} == set(CHAINS) - {"classify"}
    assert CHAINS_OF["main_table"] == ("main-table",), "a switch's extra steps rewrite one rule"


def test_spread_fills_the_map():
    rules = render(PinningState(NETWORKS, frozenset({0, 2}), (0, 2)), PinningConfig())
    assert comments(rules.chains["new-connections"]) == ["new connections: spread over vpn-shoots 0,2"]
    assert rules.spread == {u32(0): u32(0x100000), u32(1): u32(0x300000)}


def test_unpinned_state_marks_nothing():
    chains = render(PinningState(NETWORKS), PinningConfig()).chains
    assert chains["new-connections"] == chains["main-table"] == chains["refuse"] == []
    assert comments(chains["pin"]) == ["on the main table's path"]


@pytest.mark.parametrize("new_connections", [(), (1,), (0, 1)])
def test_a_successor_reads_the_choices_back(new_connections):
    state = PinningState(NETWORKS, frozenset({0, 1, 3}), new_connections, main_table=0, refused=frozenset({3}))
    adopted = adopted_state(all_comments(render(state, PinningConfig())), NETWORKS)
    # Not where the main table routes: that is the caller's to say again.
    assert adopted == PinningState(NETWORKS, state.pinned, new_connections, None, state.refused)


def test_foreign_comments_are_ignored():
    assert adopted_state([None, "something else", "new connections: nowhere"], NETWORKS) == PinningState(NETWORKS)
