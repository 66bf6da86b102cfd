"""The connection-pinning ruleset, as data (pure; ``pinning`` writes it).

One inet table; each kind of change rewrites one small chain:

    chain route  (type route, hook output, priority -90: after NAT at -100, so it sees the
                  address vpn2's NETMAP wrote; a changed mark makes the kernel route the packet again)
        jump refuse; ip(6) daddr <shoot network>: jump classify (each network); jump pin
    chain refuse             vpn-shoot j refused: ct mark == j, original direction: tcp reset / icmpx
    chain classify           ct state not new: return; ct mark already ours: return (a retransmitted
                             SYN keeps its choice); jump new-connections
    chain new-connections    ct mark |= j, or ct mark = @spread[numgen random mod n]
    chain pin                jump main-table; pinned to vpn-shoot j: meta mark |= j
                             (ip rule fwmark j → table of j)
    chain main-table         the main table's vpn-shoot j: accept, unmarked (the main table routes it
                             there anyway; the re-route would cost about 0.7 µs per packet)

Rules carry comments (``nft list ruleset`` shows them); a restarted
path-controller reads its predecessor's choices back from them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from ipaddress import IPv4Network, IPv6Network

from netlink_adapter import nft_expressions as x
from netlink_adapter.nft_expressions import Rule

IPNetwork = IPv4Network | IPv6Network
ROUTE_CHAIN, REFUSE_CHAIN, CLASSIFY_CHAIN = "route", "refuse", "classify"
NEW_CHAIN, PIN_CHAIN, MAIN_CHAIN = "new-connections", "pin", "main-table"
CHAINS = (REFUSE_CHAIN, NEW_CHAIN, CLASSIFY_CHAIN, MAIN_CHAIN, PIN_CHAIN, ROUTE_CHAIN)  # each after those it jumps to
SPREAD_MAP = "spread"
# The chains a change of a PinningState field rewrites.
CHAINS_OF = {
    "networks": (ROUTE_CHAIN,),
    "refused": (REFUSE_CHAIN,),
    "new_connections": (NEW_CHAIN,),
    "main_table": (MAIN_CHAIN,),
    "pinned": (PIN_CHAIN,),
}


@dataclass(frozen=True)
class PinningConfig:
    """Marks, tables and priorities; vpn-shoot j gets mark (j+1) at the mask's lowest bit."""

    mark_mask: int = 0x00F00000
    rule_priority: int = 1000  # of the ip rules fwmark → table (before main at 32766)
    first_table: int = 100  # routing table of vpn-shoot j: first_table + j
    chain_priority: int = -90  # after NAT (-100)
    table: str = "havpn_pinning"
    # Only TCP has a connection a switch would break; datagrams (UDP, ICMP) follow the main
    # table, so they move at a switch at once instead of waiting in a dead tunnel for close_after.
    tcp_only: bool = True

    def __post_init__(self):
        mask = self.mark_mask
        if not 0 < mask <= 0xFFFFFFFF or (mask >> self.shift) & ((mask >> self.shift) + 1):
            raise ValueError(f"mark mask {mask:#x}: want one run of set bits, e.g. 0x00f00000")
        if self.max_targets < 2:
            raise ValueError(f"mark mask {mask:#x} has room for {self.max_targets} vpn-shoot(s), want at least 2")
        if self.chain_priority <= -100:
            raise ValueError(f"chain priority {self.chain_priority}: must come after NAT (-100)")

    @property
    def shift(self) -> int:
        return (self.mark_mask & -self.mark_mask).bit_length() - 1

    @property
    def max_targets(self) -> int:
        return self.mark_mask >> self.shift

    def mark_of(self, j: int) -> int:
        if not 0 <= j < self.max_targets:
            raise ValueError(f"vpn-shoot {j}: the mark mask {self.mark_mask:#x} has room for 0..{self.max_targets - 1}")
        return (j + 1) << self.shift

    def table_of(self, j: int) -> int:
        return self.first_table + j


@dataclass(frozen=True)
class PinningState:
    """What the ruleset expresses; every change is a new state written in one transaction."""

    networks: tuple[IPNetwork, ...] = ()
    pinned: frozenset[int] = frozenset()  # vpn-shoots whose marked connections route by mark
    new_connections: tuple[int, ...] = ()  # () unpinned, (j,) one target, more: spread
    main_table: int | None = None  # the vpn-shoot the main table routes to (its connections skip re-routing)
    refused: frozenset[int] = frozenset()


Rules = list[tuple[Rule, str]]  # (rule, comment)


@dataclass
class Ruleset:
    chains: dict[str, Rules] = field(default_factory=dict)
    spread: dict[bytes, bytes] = field(default_factory=dict)  # the map's elements


def new_connections_comment(targets: tuple[int, ...]) -> str:
    if len(targets) == 1:
        return f"new connections: vpn-shoot {targets[0]}"
    return f"new connections: spread over vpn-shoots {','.join(map(str, targets))}"


def render(state: PinningState, config: PinningConfig) -> Ruleset:
    mask = config.mark_mask
    route: Rules = [([x.verdict(x.JUMP, REFUSE_CHAIN)], "refused vpn-shoots")]
    for network in state.networks:
        route.append((x.daddr_in(network) + [x.verdict(x.JUMP, CLASSIFY_CHAIN)], f"shoot network {network}"))
    route.append(([x.verdict(x.JUMP, PIN_CHAIN)], "pinned connections"))

    refuse: Rules = []
    for j in sorted(state.refused):
        refused = x.ct_mark_is(mask, config.mark_of(j)) + x.ct_direction_original()
        # Our own reset travels in the reply direction of the same entry and must pass.
        tcp_reset = refused + x.l4proto_is(x.IPPROTO_TCP) + [x.reject(x.REJECT_TCP_RST)]
        refuse.append((tcp_reset, f"refuse vpn-shoot {j}: tcp reset"))
        icmpx = refused + [x.reject(x.REJECT_ICMPX_UNREACH, x.ICMPX_ADMIN_PROHIBITED)]
        refuse.append((icmpx, f"refuse vpn-shoot {j}: admin-prohibited"))

    classify: Rules = [
        (x.ct_state_is_not_new() + [x.verdict(x.RETURN)], "not a new connection"),
        *([(x.l4proto_is(x.IPPROTO_TCP, x.CMP_NEQ) + [x.verdict(x.RETURN)], "not tcp: follows the main table")]
          if config.tcp_only else []),
        (x.ct_mark_is(mask, 0, x.CMP_NEQ) + [x.verdict(x.RETURN)], "decided at its first packet"),
        ([x.verdict(x.JUMP, NEW_CHAIN)], "choose"),
    ]

    new: Rules = []
    spread = {}
    targets = state.new_connections
    if len(targets) == 1:
        new.append((x.ct_mark_merge(mask, config.mark_of(targets[0])), new_connections_comment(targets)))
    elif targets:
        spread = {x.u32(i): x.u32(config.mark_of(j)) for i, j in enumerate(targets)}
        new.append((x.ct_mark_set_from_random_map(SPREAD_MAP, len(targets)), new_connections_comment(targets)))

    main: Rules = []
    if state.main_table is not None:  # accept: this chain's end (a return would only leave main-table)
        skip = x.ct_mark_is(mask, config.mark_of(state.main_table)) + [x.verdict(x.ACCEPT)]
        main.append((skip, f"main table's vpn-shoot {state.main_table}: no re-route"))

    pin: Rules = [([x.verdict(x.JUMP, MAIN_CHAIN)], "on the main table's path")]
    for j in sorted(state.pinned):
        mark = config.mark_of(j)
        pin.append((x.ct_mark_is(mask, mark) + x.meta_mark_merge(mask, mark), f"pinned to vpn-shoot {j}"))

    chains = {
        ROUTE_CHAIN: route,
        REFUSE_CHAIN: refuse,
        CLASSIFY_CHAIN: classify,
        NEW_CHAIN: new,
        PIN_CHAIN: pin,
        MAIN_CHAIN: main,
    }
    return Ruleset(chains, spread)


_NEW = re.compile(r"new connections: (?:vpn-shoot (\d+)|spread over vpn-shoots ([\d,]+))$")
_REFUSED = re.compile(r"refuse vpn-shoot (\d+): ")
_PINNED = re.compile(r"pinned to vpn-shoot (\d+)$")


def adopted_state(comments: Iterable[str | None], networks: Iterable[IPNetwork]) -> PinningState:
    """The choices a previous instance's rules (their comments) express, for ``networks``.

    The main table's vpn-shoot is not adopted: until the caller says where
    the main table routes, every pinned connection routes by its mark.
    """
    new: tuple[int, ...] = ()
    refused, pinned = set(), set()
    for comment in comments:
        comment = comment or ""
        if match := _NEW.match(comment):
            one, spread = match.groups()
            new = (int(one),) if one is not None else tuple(int(j) for j in spread.split(","))
        elif match := _REFUSED.match(comment):
            refused.add(int(match.group(1)))
        elif match := _PINNED.match(comment):
            pinned.add(int(match.group(1)))
    return PinningState(tuple(networks), frozenset(pinned), new, None, frozenset(refused))
