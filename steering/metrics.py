"""Prometheus metrics of server steering, under the daemon's prefix
(``path_controller_…`` or ``tunnel_controller_…``); every labelled series exported at 0."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge

from steering.core import MOVE_REASONS

REJECT_REASONS = ("malformed", "unauthenticated", "bad-mac", "replayed", "foreign-sender", "crossed")


class SteeringMetrics:
    def __init__(self, registry: CollectorRegistry, prefix: str, servers: int):
        p = f"{prefix}_server"
        self.server_in_use = Gauge(f"{p}_in_use", "OpenVPN server this pod's bond uses (-1: none).", registry=registry)
        self.server_moves = Counter(f"{p}_moves_total", "Changes of the server in use, by reason.", ["reason"], registry=registry)
        self.seconds_since_move = Gauge(
            f"{p}_seconds_since_move", "Seconds since the bond last changed server.", registry=registry
        )
        self.peers_reachable = Gauge(
            f"{p}_peers_reachable", "Peers heard through each server that hear this pod there.", ["server"], registry=registry
        )
        self.peers_known = Gauge(f"{p}_peers_known", "Peers heard lately through any server.", registry=registry)
        self.alone = Gauge(f"{p}_alone", "1 while no known peer is reachable through the server in use.", registry=registry)
        self.beacons_received = Counter(f"{p}_beacons_received_total", "Beacons accepted, by server.", ["server"], registry=registry)
        self.beacons_sent = Counter(f"{p}_beacons_sent_total", "Beacons sent, by server.", ["server"], registry=registry)
        self.beacon_send_errors = Counter(
            f"{p}_beacon_send_errors_total", "Beacons the kernel refused, by server.", ["server"], registry=registry
        )
        self.beacons_rejected = Counter(f"{p}_beacons_rejected_total", "Frames ignored, by reason.", ["reason"], registry=registry)
        self.bond_write_errors = Counter(f"{p}_bond_write_errors_total", "Failed writes of the bond's primary.", registry=registry)
        self.server_in_use.set(-1)
        for reason in MOVE_REASONS:
            self.server_moves.labels(reason)
        for reason in REJECT_REASONS:
            self.beacons_rejected.labels(reason)
        for server in range(servers):
            for family in (self.peers_reachable, self.beacons_received, self.beacons_sent, self.beacon_send_errors):
                family.labels(server)

    def follow(self, seconds_since_move: Callable[[], float], peers: Callable[[], int], alone: Callable[[], bool]) -> None:
        """Read these from the steering state at scrape time."""
        self.seconds_since_move.set_function(seconds_since_move)
        self.peers_known.set_function(peers)
        self.alone.set_function(lambda: 1 if alone() else 0)
