"""A bond network without OpenVPN, for kernel tests of the daemons.

Each OpenVPN server is played by a bridge (``br<i>``) in one "switch"
namespace; every peer namespace has ``eth<i>`` (a veth whose other end
``<peer>s<i>`` sits on ``br<i>``) enslaved to ``bond0`` with vpn2's bond
attributes and its address from the plan. Seed peers also get the
``bond0-ip6tnl<j>`` tunnels ``bonding setup`` makes. Failures are injected on
the switch-side veth ends: ``cut`` (link down, like an OpenVPN client that
lost its tap; it returns once the peer's slave has lost carrier) and
``netem`` (loss or delay on the path, both directions; ``netem_counters``
shows what it dropped).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from ipaddress import IPv6Address

from bonding import sysctl
from bonding.plan import BOND_DEVICE, AddressPlan, seed_tunnel_name
from netlink_adapter import AsyncIPRoute
from netlink_adapter.addresses import ensure_only_address
from netlink_adapter.bond import BondSpec, ensure_bond
from netlink_adapter.ip6tnl import ensure_ip6tnl
from netlink_adapter.links import link_by_name, link_index
from tests.netns import nsutil
from tests.netns.faults import QdiscCounters, root_qdisc_counters

PLAN = AddressPlan.from_text()


@dataclass
class Peer:
    name: str
    ns: str
    address: IPv6Address
    side: str  # "seed" | "shoot"
    index: int
    ifindex: dict[str, int] = field(default_factory=dict)


class BondLab:
    """Build with ``await BondLab.create(make_netns, ipr_factory)``."""

    def __init__(
        self, make_netns, ipr_factory, servers: int = 2, shoot_clients: int = 2, miimon: int = 100,
        split_tolerant: bool = True,
    ):
        """``split_tolerant``: bonds as `bonding setup` makes them by default; False: vpn2's
        (``fail_over_mac active``, inactive slaves drop frames)."""
        self.split_tolerant = split_tolerant
        self._make_netns = make_netns
        self._ipr_factory = ipr_factory
        self.servers = servers
        self.shoot_clients = shoot_clients
        self.miimon = miimon
        self.switch_ns = ""
        self.switch: AsyncIPRoute | None = None
        self.peers: dict[str, Peer] = {}
        self._peer_ipr: dict[str, AsyncIPRoute] = {}

    @classmethod
    async def create(cls, make_netns, ipr_factory, **kwargs) -> BondLab:
        lab = cls(make_netns, ipr_factory, **kwargs)
        lab.switch_ns = make_netns("sw")
        lab.switch = await ipr_factory(lab.switch_ns)
        for i in range(lab.servers):
            await lab.switch.link("add", ifname=f"br{i}", kind="bridge")
            # No STP, no forwarding delay: a port forwards as soon as it is up.
            br = await link_index(lab.switch, f"br{i}")
            await lab.switch.link("set", index=br, kind="bridge", br_forward_delay=0, br_stp_state=0)
            await lab.switch.link("set", index=br, state="up")
        return lab

    async def ipr(self, peer: Peer) -> AsyncIPRoute:
        return await self._ipr_factory(peer.ns)

    async def add_peer(self, name: str, side: str, index: int) -> Peer:
        address = PLAN.seed_client(index) if side == "seed" else PLAN.shoot_client(index)
        peer = Peer(name, self._make_netns(name[:6]), address, side, index)
        ipr = self._peer_ipr[name] = await self._ipr_factory(peer.ns)
        slaves = []
        for i in range(self.servers):
            outer = f"{name[:10]}s{i}"
            await self.switch.link("add", ifname=outer, kind="veth", peer={"ifname": f"eth{i}", "net_ns_fd": peer.ns})
            outer_index = await link_index(self.switch, outer)
            bridge = await link_index(self.switch, f"br{i}")
            await self.switch.link("set", index=outer_index, master=bridge, state="up")
            inner = await link_index(ipr, f"eth{i}")
            slaves.append(inner)
            peer.ifindex[f"eth{i}"] = inner
        spec = BondSpec(miimon=self.miimon)
        if not self.split_tolerant:
            spec = BondSpec(miimon=self.miimon, fail_over_mac=1, all_slaves_active=0)
        bond, _ = await ensure_bond(ipr, BOND_DEVICE, spec, slaves)
        peer.ifindex[BOND_DEVICE] = bond
        # As `bonding setup` leaves it (the daemons' behaviour under loss depends on it).
        nsutil.run_in(peer.ns, nsutil.sysctl_cmd(sysctl.bond_neighbour_sysctls(BOND_DEVICE)))
        await ensure_only_address(ipr, bond, PLAN.on_bond(address))
        if side == "seed":
            for j in range(self.shoot_clients):
                index, _ = await ensure_ip6tnl(ipr, seed_tunnel_name(j), address, PLAN.shoot_client(j))
                peer.ifindex[seed_tunnel_name(j)] = index
        self.peers[name] = peer
        return peer

    async def add_seed(self, name: str, index: int) -> Peer:
        return await self.add_peer(name, "seed", index)

    async def add_shoot(self, j: int, name: str | None = None) -> Peer:
        return await self.add_peer(name or f"shoot{j}", "shoot", j)

    async def _outer(self, peer: Peer, server: int) -> int:
        return await link_index(self.switch, f"{peer.name[:10]}s{server}")

    async def cut(self, peer: Peer, server: int | None = None) -> None:
        """Take the peer off server ``server`` (all servers if None): its slave loses carrier."""
        await self._set_paths(peer, server, up=False)

    async def restore(self, peer: Peer, server: int | None = None) -> None:
        await self._set_paths(peer, server, up=True)

    async def _set_paths(self, peer: Peer, server: int | None, up: bool) -> None:
        """Switch-side ends up or down; returns once the peer's slaves show the carrier change."""
        chosen = range(self.servers) if server is None else [server]
        for i in chosen:
            await self.switch.link("set", index=await self._outer(peer, i), state="up" if up else "down")

        async def carriers_changed() -> bool:
            return all([await self.carrier(peer, i) == up for i in chosen])

        what = f"{peer.name}'s eth{'/'.join(map(str, chosen))} carrier {'back' if up else 'gone'}"
        await nsutil.wait_for(carriers_changed, timeout=5, message=what)

    async def carrier(self, peer: Peer, server: int) -> bool:
        """Whether the peer's slave to server ``server`` has carrier (what its bond sees)."""
        link = await link_by_name(self._peer_ipr[peer.name], f"eth{server}")
        return bool(link.get("IFLA_CARRIER"))

    def netem(self, peer: Peer, spec: str | None, server: int | None = None) -> None:
        """Apply ``tc netem <spec>`` on both directions of the peer's path(s); None removes it."""
        for i in range(self.servers) if server is None else [server]:
            outer = f"{peer.name[:10]}s{i}"
            for ns, dev in ((self.switch_ns, outer), (peer.ns, f"eth{i}")):
                if spec is None:
                    nsutil.run_in(ns, ["tc", "qdisc", "del", "dev", dev, "root"], check=False)
                else:
                    nsutil.run_in(ns, ["tc", "qdisc", "replace", "dev", dev, "root", "netem", *spec.split()])

    def netem_counters(self, peer: Peer, server: int | None = None) -> QdiscCounters:
        """What the netem qdiscs on the peer's path(s) passed and dropped, both directions."""
        total = QdiscCounters()
        for i in range(self.servers) if server is None else [server]:
            total += root_qdisc_counters(self.switch_ns, f"{peer.name[:10]}s{i}")
            total += root_qdisc_counters(peer.ns, f"eth{i}")
        return total

    async def wait_reachable(self, src: Peer, dst: Peer, timeout: float = 10.0) -> None:
        """Until ``src`` gets an echo reply from ``dst``'s bond address."""

        def ping() -> bool:
            result = nsutil.run_in(src.ns, ["ping", "-6", "-c1", "-W1", str(dst.address)], check=False)
            return result.returncode == 0

        await nsutil.wait_for(lambda: asyncio.to_thread(ping), timeout=timeout, message=f"{src.name} → {dst.name}")
