"""Connection pinning in the kube-apiserver pod: the kernel side.

A new connection to a shoot network gets the conntrack mark of the vpn-shoot
chosen for new connections at its first packet; every packet of it then
carries that mark as its fwmark, and ``ip rule fwmark <mark>/<mask> lookup
<table of j>`` sends it through ``bond0-ip6tnl<j>`` whatever the main table
says. A switch therefore moves only new connections. The ruleset is in
``pinning_rules``; every change rewrites our table's chains in one nf_tables
transaction, so packets see the old or the new rules, never a mix, and no
other table, rule or route is touched.

The runner calls, from its effects: ``probe`` once (a reason means: log it
once and route as before), ``install`` at start, ``tunnel_changed`` when a
``bond0-ip6tnl<j>`` appears, changes or goes, ``new_connections_to`` /
``new_connections_spread`` and ``main_routes_through`` around a switch,
``refuse`` / ``close_connections`` when a vpn-shoot is gone and ``allow``
when it is back.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace
from ipaddress import ip_network
from socket import AF_INET, AF_INET6
from typing import NamedTuple

from netlink_adapter import AsyncIPRoute
from netlink_adapter import nft_expressions as x
from netlink_adapter.conntrack import flows_with_mark, flush_mark
from netlink_adapter.errors import KERNEL_ERRORS, KernelFeatureMissing
from netlink_adapter.nftables import Nftables, Transaction
from netlink_adapter.routes import delete_route, dump_routes, replace_route, replace_unreachable_route
from netlink_adapter.rules import FwmarkRule, delete_fwmark_rule, dump_fwmark_rules, ensure_fwmark_rule
from netlink_adapter.sockdiag import destroy_sockets, sock_destroy_supported
from path_controller.pinning_rules import (
    CHAINS,
    CHAINS_OF,
    NEW_CHAIN,
    ROUTE_CHAIN,
    SPREAD_MAP,
    IPNetwork,
    PinningConfig,
    PinningState,
    adopted_state,
    render,
)

ANYWHERE = (ip_network("0.0.0.0/0"), ip_network("::/0"))
ROUTE_HOOK = 3  # NF_INET_LOCAL_OUT


class Closed(NamedTuple):
    flushed: int  # conntrack entries deleted
    destroyed: int  # local sockets aborted (0 where the kernel cannot)


class ConnectionPinning:
    def __init__(self, ipr: AsyncIPRoute, protocol: int, config: PinningConfig | None = None, netns: str | None = None):
        """``protocol``: the route protocol of our routes in the per-vpn-shoot tables."""
        self.ipr = ipr
        self.protocol = protocol
        self.config = config or PinningConfig()
        self.netns = netns
        self.nft = Nftables(netns=netns)
        self.state = PinningState()
        self.tunnels: dict[int, int | None] = {}
        self.sockets_destroyable: bool | None = None  # known after probe()
        self._lock = asyncio.Lock()

    def close(self) -> None:
        self.nft.close()

    # --- capability ---------------------------------------------------------

    async def probe(self) -> str | None:
        """None if this kernel can pin connections, else one line saying what it lacks.

        Each step builds a throw-away table and deletes it in the same
        transaction: nothing stays, whatever fails. Also finds out whether
        sockets can be destroyed (``sockets_destroyable``); without that,
        ``close_connections`` still works, only slower.
        """
        probe_table = f"{self.config.table}_probe"
        mask, mark = self.config.mark_mask, self.config.mark_of(0)
        steps = [
            ("nftables for inet (CONFIG_NF_TABLES_INET)", None, None),
            ("nftables route chains at output (CONFIG_NF_TABLES_INET)", "route chain", None),
            ("the nftables ct expression with marks (nft_ct, CONFIG_NF_CONNTRACK_MARK)", "route chain",
             x.ct_mark_merge(mask, mark) + x.meta_mark_merge(mask, mark)),
            ("nftables reject for inet (nft_reject_inet)", "route chain",
             x.ct_direction_original() + [x.reject(x.REJECT_ICMPX_UNREACH, x.ICMPX_ADMIN_PROHIBITED)]),
        ]  # fmt: skip
        for lacking, chain, rule in steps:
            txn = self.nft.transaction(probe_table)
            txn.add_table()
            if chain:
                txn.add_chain(ROUTE_CHAIN, hook="output", priority=self.config.chain_priority, chain_type="route")
            if rule:
                txn.add_rule(ROUTE_CHAIN, rule, "probe")
            txn.delete_table()
            try:
                await self.nft.commit(txn)
            except KERNEL_ERRORS as exc:
                return f"this kernel lacks {lacking}: {exc}"
        try:
            await flows_with_mark(mark, mask, self.netns)
        except KERNEL_ERRORS as exc:
            return f"this kernel lacks conntrack over netlink (nf_conntrack_netlink): {exc}"
        try:
            await dump_fwmark_rules(self.ipr)
        except KERNEL_ERRORS as exc:
            return f"this kernel lacks policy routing (CONFIG_IP_MULTIPLE_TABLES, CONFIG_IPV6_MULTIPLE_TABLES): {exc}"
        self.sockets_destroyable = await sock_destroy_supported(self.netns)
        return None

    async def spread_supported(self) -> str | None:
        """None if new connections can be spread (numgen and maps), else what is lacking."""
        txn = self.nft.transaction(f"{self.config.table}_probe")
        txn.add_table()
        txn.add_map(SPREAD_MAP)
        txn.add_chain(NEW_CHAIN)
        txn.add_rule(NEW_CHAIN, x.ct_mark_set_from_random_map(SPREAD_MAP, 2), "probe")
        txn.delete_table()
        try:
            await self.nft.commit(txn)
        except KERNEL_ERRORS as exc:
            return f"this kernel lacks nftables numgen or maps (nft_numgen): {exc}"
        return None

    # --- set-up -------------------------------------------------------------

    async def install(self, networks: Iterable[IPNetwork], tunnels: Mapping[int, int]) -> None:
        """Our table, the ip rules and per-vpn-shoot routes for ``tunnels`` ({j: ifindex}).

        Idempotent, and adopts what a previous instance left: its choice for
        new connections (if those vpn-shoots have tunnels), its refused
        vpn-shoots, its pinned marks (their connections keep routing by mark).
        Only our chains' rules are rewritten, in one transaction; nothing
        carrying traffic goes away.
        """
        async with self._lock:
            networks = tuple(networks)
            present = {chain.name: chain for chain in await self.nft.chains(self.config.table)}
            comments = [rule.comment for rule in await self.nft.rules(self.config.table)] if present else []
            state = adopted_state(comments, networks)
            new_connections = state.new_connections if set(state.new_connections) <= set(tunnels) else ()
            state = replace(state, pinned=state.pinned | set(tunnels), new_connections=new_connections)
            route = present.get(ROUTE_CHAIN)
            moved = route is not None and (route.hook, route.priority, route.chain_type) != (
                ROUTE_HOOK, self.config.chain_priority, "route",
            )  # fmt: skip
            stale = [name for name in present if name not in CHAINS] + ([ROUTE_CHAIN] if moved else [])
            for j, ifindex in tunnels.items():
                await self._point_table(j, ifindex, networks)
            await self._drop_stale_routes(networks)
            await self._write(state, CHAINS, stale_chains=stale)

    async def tunnel_changed(self, j: int, ifindex: int | None) -> None:
        """vpn-shoot j's tunnel is now ``ifindex`` (None: gone; its pinned connections then get
        EHOSTUNREACH instead of moving to another vpn-shoot, until it is back)."""
        async with self._lock:
            await self._point_table(j, ifindex, self.state.networks)
            if j not in self.state.pinned:
                await self._write(replace(self.state, pinned=self.state.pinned | {j}), CHAINS_OF["pinned"])

    # --- choices ------------------------------------------------------------

    async def new_connections_to(self, j: int) -> None:
        """From the next new connection on, pin new connections to vpn-shoot j (one transaction)."""
        await self.new_connections_spread([j])

    async def new_connections_spread(self, targets: Iterable[int]) -> None:
        """Pin each new connection to one of ``targets``, chosen at random once (one transaction)."""
        targets = tuple(sorted(set(targets)))
        if not targets:
            raise ValueError("new connections to no vpn-shoot")
        if without := [j for j in targets if self.tunnels.get(j) is None]:
            raise LookupError(f"vpn-shoot(s) {without}: no tunnel yet (tunnel_changed first), connections would fail")
        await self._change(lambda state: replace(state, new_connections=targets, pinned=state.pinned | set(targets)))

    async def main_routes_through(self, j: int | None) -> None:
        """The main table now routes the shoot networks through vpn-shoot j (None: unknown, or about to change).

        Connections pinned to j then skip the re-route (it would pick the same
        path, at about 0.7 µs per packet). Call it with None before the main
        table changes, and with the new j after (one rule each).
        """
        await self._change(lambda state: replace(state, main_table=j))

    async def refuse(self, j: int) -> None:
        """Packets of connections pinned to vpn-shoot j get a TCP reset / ICMP admin-prohibited."""
        await self._change(lambda state: replace(state, refused=state.refused | {j}))

    async def allow(self, j: int) -> None:
        """vpn-shoot j is back: forget its old connections, stop refusing (before it gets new ones)."""
        if j in self.state.refused:
            await flush_mark(self.config.mark_of(j), self.config.mark_mask, self.netns)
            await self._change(lambda state: replace(state, refused=state.refused - {j}))

    async def close_connections(self, j: int) -> Closed:
        """vpn-shoot j is gone: its connections error now instead of hanging.

        Refuses j, deletes its conntrack entries, and destroys the local
        sockets of those connections where the kernel can (their owners see
        ECONNABORTED at once, idle or not). Where sockets cannot be
        destroyed, a connection errors at its next transmission (the next
        TCP retransmission: up to 3 s after a loss), an idle one at its next
        write.
        """
        await self.refuse(j)
        flows = await flush_mark(self.config.mark_of(j), self.config.mark_mask, self.netns)
        destroyed = 0
        if self.sockets_destroyable is not False:
            try:
                destroyed = await destroy_sockets(flows, self.netns)
                self.sockets_destroyable = True
            except KernelFeatureMissing:
                self.sockets_destroyable = False
        return Closed(flushed=len(flows), destroyed=destroyed)

    # --- teardown (tests, cleanup) -------------------------------------------

    async def remove(self) -> None:
        """Delete our table, our ip rules and the per-vpn-shoot tables' routes of ours."""
        async with self._lock:
            if await self.nft.chains(self.config.table):
                txn = self.nft.transaction(self.config.table)
                txn.delete_table()
                await self.nft.commit(txn)
            for rule in await dump_fwmark_rules(self.ipr):
                if self._ours(rule):
                    await delete_fwmark_rule(self.ipr, rule)
            for route in await dump_routes(self.ipr, table=None):
                if route.proto == self.protocol and self._our_table(route.table):
                    await delete_route(self.ipr, route.dst, proto=self.protocol, table=route.table)
            self.state = PinningState()

    # --- internals ----------------------------------------------------------

    def _our_table(self, table: int) -> bool:
        return self.config.first_table <= table < self.config.first_table + self.config.max_targets

    def _ours(self, rule: FwmarkRule) -> bool:
        return rule.priority == self.config.rule_priority and rule.mask == self.config.mark_mask

    async def _change(self, change: Callable[[PinningState], PinningState]) -> None:
        """Apply ``change`` to the state; rewrite the chains whose part of it changed."""
        async with self._lock:
            state = change(self.state)
            chains = {chain: None for name, chains in CHAINS_OF.items() for chain in chains
                      if getattr(state, name) != getattr(self.state, name)}  # fmt: skip
            if chains:
                await self._write(state, tuple(chains))

    async def _write(self, state: PinningState, chains: tuple[str, ...], stale_chains: Iterable[str] = ()) -> None:
        """Rewrite ``chains`` as ``state`` says, in one transaction.

        All of them (``CHAINS``): also create the table, map and chains, and
        delete ``stale_chains`` (left by another version, or the route chain
        at another priority than configured; rules that jump there go first).
        """
        config = self.config
        rules = render(state, config)
        txn: Transaction = self.nft.transaction(config.table)
        flushed = chains
        if chains == CHAINS:
            stale_chains = tuple(stale_chains)
            txn.add_table()
            txn.add_map(SPREAD_MAP)
            for chain in CHAINS:
                if chain not in stale_chains:
                    txn.add_chain(chain, **self._hook(chain))
            flushed = tuple(dict.fromkeys((*CHAINS, *stale_chains)))
        for chain in flushed:
            txn.flush_chain(chain)
        for chain in stale_chains:
            txn.delete_chain(chain)
            if chain in CHAINS:
                txn.add_chain(chain, **self._hook(chain))
        if NEW_CHAIN in chains and (rules.spread or len(self.state.new_connections) > 1 or chains == CHAINS):
            txn.flush_map(SPREAD_MAP)
            txn.add_map_elements(SPREAD_MAP, rules.spread)
        for chain in chains:
            for rule, comment in rules.chains[chain]:
                txn.add_rule(chain, rule, comment)
        await self.nft.commit(txn)
        self.state = state

    def _hook(self, chain: str) -> dict:
        if chain != ROUTE_CHAIN:
            return {}
        return {"hook": "output", "priority": self.config.chain_priority, "chain_type": "route"}

    async def _point_table(self, j: int, ifindex: int | None, networks: Iterable[IPNetwork]) -> None:
        """vpn-shoot j's table: the shoot networks through its tunnel, the rest unreachable; its ip rules."""
        table = self.config.table_of(j)
        for anywhere in ANYWHERE:
            await replace_unreachable_route(self.ipr, anywhere, proto=self.protocol, table=table)
        for network in networks:
            if ifindex is None:
                await delete_route(self.ipr, network, proto=self.protocol, table=table)
            else:
                await replace_route(self.ipr, network, ifindex, proto=self.protocol, table=table)
        self.tunnels[j] = ifindex
        for family in (AF_INET, AF_INET6):
            rule = FwmarkRule(family, self.config.rule_priority, self.config.mark_of(j), self.config.mark_mask, table)
            await ensure_fwmark_rule(self.ipr, rule)

    async def _drop_stale_routes(self, networks: Iterable[IPNetwork]) -> None:
        """Routes of ours in the per-vpn-shoot tables for networks no longer routed."""
        wanted = set(networks) | set(ANYWHERE)
        for route in await dump_routes(self.ipr, table=None):
            if route.proto == self.protocol and self._our_table(route.table) and route.dst not in wanted:
                await delete_route(self.ipr, route.dst, proto=self.protocol, table=route.table)
