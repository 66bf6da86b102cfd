"""Desired kernel state and the steps that reach it (pure).

From the peers: one ip6tnl per peer and one host route per pod IP through
it. ``plan`` compares that with what the kernel has (``KernelView``) and
orders the steps the way Tailscale's cidrDiff does: everything that adds or
replaces first, everything that deletes last, so a changed pod IP is routed
before the old route goes (make before break) and a device is never deleted
while something still needs it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_network

from tunnel_controller.registry import Peer

IPAddress = IPv4Address | IPv6Address
IPNetwork = IPv4Network | IPv6Network


def host_route(ip: IPAddress) -> IPNetwork:
    """``ip/32`` or ``ip/128``."""
    return ip_network(ip)


@dataclass(frozen=True)
class TunnelSpec:
    name: str
    local: IPv6Address
    remote: IPv6Address


@dataclass(frozen=True)
class RouteEntry:
    device: str
    proto: int


@dataclass
class KernelView:
    """Our part of the kernel as last seen: tunnels that match their spec and are up,
    the ifindex of every tunnel device we track, and host routes through them."""

    tunnels: dict[str, TunnelSpec] = field(default_factory=dict)
    indexes: dict[str, int] = field(default_factory=dict)
    routes: dict[IPNetwork, RouteEntry] = field(default_factory=dict)
    _names: dict[int, str] = field(default_factory=dict)

    def track(self, name: str, index: int) -> None:
        old = self.indexes.get(name)
        if old is not None:
            self._names.pop(old, None)
        self.indexes[name] = index
        self._names[index] = name

    def device_of(self, index: int) -> str | None:
        return self._names.get(index)

    def forget_tunnel(self, name: str) -> None:
        """The device is gone (or was replaced): so are the routes through it."""
        if name not in self.indexes and name not in self.tunnels:
            return  # never tracked: no routes through it either
        self.tunnels.pop(name, None)
        index = self.indexes.pop(name, None)
        if index is not None:
            self._names.pop(index, None)
        for dst in [dst for dst, entry in self.routes.items() if entry.device == name]:
            del self.routes[dst]


@dataclass
class Desired:
    tunnels: dict[str, TunnelSpec] = field(default_factory=dict)
    routes: dict[IPNetwork, str] = field(default_factory=dict)  # dst -> device
    owners: dict[str, IPv6Address] = field(default_factory=dict)  # device -> peer remote
    contested: set[IPNetwork] = field(default_factory=set)  # pod IPs claimed by more than one peer


def desired_state(peers: Iterable[Peer], local: IPv6Address) -> Desired:
    """Tunnels and back-routes for ``peers``; a pod IP two peers claim goes to the newer claim."""
    desired = Desired()
    claims: dict[IPNetwork, Peer] = {}
    for peer in peers:
        desired.tunnels[peer.device] = TunnelSpec(peer.device, local, peer.remote)
        desired.owners[peer.device] = peer.remote
        for ip in peer.pod_ips:
            dst = host_route(ip)
            rival = claims.get(dst)
            if rival is not None:
                desired.contested.add(dst)
                if _claim_key(rival) > _claim_key(peer):
                    continue
            claims[dst] = peer
    desired.routes = {dst: peer.device for dst, peer in claims.items()}
    return desired


def _claim_key(peer: Peer) -> tuple:
    return (peer.claimed_at, peer.last_seen, int(peer.remote))


# --- steps ------------------------------------------------------------------


@dataclass(frozen=True)
class EnsureTunnel:
    spec: TunnelSpec


@dataclass(frozen=True)
class ReplaceRoute:
    dst: IPNetwork
    device: str


@dataclass(frozen=True)
class DeleteRoute:
    dst: IPNetwork
    device: str


@dataclass(frozen=True)
class DeleteTunnel:
    name: str


Step = EnsureTunnel | ReplaceRoute | DeleteRoute | DeleteTunnel


def plan(desired: Desired, view: KernelView, proto: int, held: set[str] = frozenset()) -> list[Step]:
    """Steps from ``view`` to ``desired``: adds and replaces first, deletes last.

    A (re)created tunnel is followed at once by the routes it must carry (it
    has none), so the first peers of a large batch are usable before the
    last ones are created. Devices in ``held`` (peers waiting for a retry)
    are left as they are.
    """
    by_device = routes_by_device(desired)
    adds: list[Step] = []
    for name, spec in desired.tunnels.items():
        if name in held:
            continue
        if view.tunnels.get(name) != spec:
            # Recreated it has no routes, and one that was down lost its IPv4 routes without
            # a netlink notice: route everything it should carry (replace is idempotent).
            adds.append(EnsureTunnel(spec))
            adds.extend(ReplaceRoute(dst, name) for dst in by_device.get(name, ()))
        else:
            wanted = RouteEntry(name, proto)
            adds.extend(ReplaceRoute(dst, name) for dst in by_device.get(name, ()) if view.routes.get(dst) != wanted)
    delete_routes = [
        DeleteRoute(dst, entry.device)
        for dst, entry in view.routes.items()
        if dst not in desired.routes and entry.device in desired.tunnels and entry.device not in held
    ]
    delete_tunnels = [DeleteTunnel(name) for name in view.indexes if name not in desired.tunnels]
    return [*adds, *delete_routes, *delete_tunnels]


def routes_by_device(desired: Desired) -> dict[str, list[IPNetwork]]:
    result: dict[str, list[IPNetwork]] = {}
    for dst, device in desired.routes.items():
        result.setdefault(device, []).append(dst)
    return result
