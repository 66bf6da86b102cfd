"""Desired routes and announced pod IPs (pure), vpn2-compatible.

Every shoot network (services, pods, nodes; IPv4 and IPv6) is routed through
the primary's ``bond0-ip6tnl<j>``. When the seed's pod network overlaps any
shoot network, IPv4 shoot networks are reached through their mapped /8s
(services 243/8, pods 244/8, nodes 242/8; vpn-shoot NETMAPs them back) and the
announced IPv4 pod IP is mapped into 241/8, keeping its lower 24 bits.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_network

IPNetwork = IPv4Network | IPv6Network
IPAddress = IPv4Address | IPv6Address

SEED_POD_MAPPED = ip_network("241.0.0.0/8")
NODE_MAPPED = ip_network("242.0.0.0/8")
SERVICE_MAPPED = ip_network("243.0.0.0/8")
POD_MAPPED = ip_network("244.0.0.0/8")


def overlaps(seed_pod_network: IPNetwork | None, shoot_networks: Iterable[IPNetwork]) -> bool:
    if seed_pod_network is None:
        return False
    return any(seed_pod_network.version == n.version and seed_pod_network.overlaps(n) for n in shoot_networks)


def map_into(address: IPv4Address, network: IPv4Network) -> IPv4Address:
    """Keep the host bits outside ``network``'s prefix (NETMAP semantics)."""
    host_mask = int(network.hostmask)
    return IPv4Address(int(network.network_address) | (int(address) & host_mask))


@dataclass(frozen=True)
class RoutePlan:
    networks: tuple[IPNetwork, ...]
    announced_ips: tuple[IPAddress, ...]
    mapped: bool


def plan_routes(
    service: Iterable[IPNetwork],
    pod: Iterable[IPNetwork],
    node: Iterable[IPNetwork],
    seed_pod_network: IPNetwork | None,
    pod_ips: Iterable[IPAddress],
) -> RoutePlan:
    service, pod, node = list(service), list(pod), list(node)
    mapped = overlaps(seed_pod_network, service + pod + node)
    networks: list[IPNetwork] = []
    for group, mapped_range in ((service, SERVICE_MAPPED), (pod, POD_MAPPED), (node, NODE_MAPPED)):
        for network in group:
            target = mapped_range if mapped and network.version == 4 else network
            if target not in networks:
                networks.append(target)
    announced = tuple(
        map_into(ip, SEED_POD_MAPPED) if mapped and isinstance(ip, IPv4Address) else ip for ip in pod_ips
    )
    return RoutePlan(tuple(networks), announced, mapped)


@dataclass(frozen=True)
class RouteChanges:
    replace: tuple[IPNetwork, ...]  # point these at the primary's tunnel, first
    remove: tuple[IPNetwork, ...]  # then drop these (ours, no longer wanted)


@dataclass(frozen=True)
class Route:
    oif: int | None
    protocol: int


def route_changes(
    desired: Iterable[IPNetwork],
    oif: int,
    protocol: int,
    present: Mapping[IPNetwork, Route],
) -> RouteChanges:
    """What to do so that every desired network goes out via ``oif``, marked ``protocol``.

    ``present`` holds the main table's routes for the desired networks and
    every route carrying ``protocol``. Routes of ours for networks no longer
    desired are removed, after the replacements (add before delete).
    """
    desired = list(desired)
    wanted = Route(oif, protocol)
    replace = tuple(n for n in desired if present.get(n) != wanted)
    remove = tuple(n for n, r in present.items() if r.protocol == protocol and n not in desired)
    return RouteChanges(replace, remove)
