"""Prometheus metrics of the path-controller (labels: target index, reason — bounded).

Every labelled series is exported from the start, at 0, for every value its
label can take (targets 0..N-1, switch reasons, bond events): "never happened"
reads as 0, and a query for a name that does not exist stays visibly empty.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Enum, Gauge, Histogram

from path_controller.bondwatch import FAILOVER_EVENTS
from path_controller.probe import Health
from path_controller.selection import SWITCH_REASONS

NOTICE_REJECTS = ("oversized", "malformed", "unauthenticated", "bad-mac", "source-mismatch", "stale", "foreign-source")
RTT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class PathMetrics:
    def __init__(self, registry: CollectorRegistry, targets: int = 0):
        """``targets``: how many vpn-shoots are probed (their series are exported from the
        start); 0 leaves that to ``add_targets``."""
        ns = "path_controller"
        self.target_up = Gauge(f"{ns}_target_up", "1 if the vpn-shoot answers probes (up or suspect).", ["target"], registry=registry)
        self.target_state = Enum(
            f"{ns}_target_state", "Probe state of each vpn-shoot.", ["target"],
            states=[h.value for h in Health], registry=registry,
        )
        self.rtt = Histogram(f"{ns}_probe_rtt_seconds", "Echo round-trip time per vpn-shoot.", ["target"], buckets=RTT_BUCKETS, registry=registry)
        self.dead_interval = Gauge(
            f"{ns}_dead_interval_seconds",
            "Silence that makes the vpn-shoot down now (longer on a path that keeps stalling).", ["target"], registry=registry,
        )
        self.late_after = Gauge(
            f"{ns}_late_after_seconds", "Age at which an unanswered probe counts as lost.", ["target"], registry=registry,
        )
        self.probes_sent = Counter(f"{ns}_probes_sent_total", "Echo requests sent.", ["target"], registry=registry)
        self.probes_lost = Counter(f"{ns}_probes_lost_total", "Echo requests never answered.", ["target"], registry=registry)
        self.probe_send_errors = Counter(f"{ns}_probe_send_errors_total", "Echo requests the kernel refused.", ["target"], registry=registry)
        self.bond_failovers = Counter(
            f"{ns}_bond_failovers_total", "This node's bond lost a slave or changed its active slave (down verdicts held).",
            ["event"], registry=registry,
        )
        self.primary = Gauge(f"{ns}_primary_target", "Index of the vpn-shoot the routes point to (-1: none).", registry=registry)
        self.switches = Counter(f"{ns}_switches_total", "Primary changes; frequent ones mean an unstable path.", ["reason"], registry=registry)
        self.stranded = Gauge(f"{ns}_no_healthy_path", "1 while the primary is down and no other vpn-shoot is healthy.", registry=registry)
        self.routes_consistent = Gauge(f"{ns}_routes_consistent", "1 when every shoot route points at the primary.", registry=registry)
        self.route_sync_errors = Counter(f"{ns}_route_sync_errors_total", "Failed netlink route operations.", registry=registry)
        self.route_repairs = Counter(f"{ns}_route_repairs_total", "Routes rewritten because they differed from the desired state.", registry=registry)
        self.leaving_notices = Counter(
            f"{ns}_leaving_notices_total", "Notices of a draining vpn-shoot (no new connections there).", ["target"],
            registry=registry,
        )
        self.serving_notices = Counter(
            f"{ns}_serving_notices_total", "Notices of a vpn-shoot that has our tunnel (it may take traffic).", ["target"],
            registry=registry,
        )
        self.notices_rejected = Counter(
            f"{ns}_notices_rejected_total", "Notices (serving, leaving) ignored, by reason.", ["reason"], registry=registry,
        )
        self.pinning = Gauge(
            f"{ns}_connection_pinning", "1 when new connections are pinned (0: off, or the kernel lacks support).",
            registry=registry,
        )
        self.pinning_consistent = Gauge(
            f"{ns}_pinning_consistent", "0 after a pinning change failed, until a retry succeeds.", registry=registry,
        )
        self.pinning_errors = Counter(f"{ns}_pinning_errors_total", "Pinning changes the kernel refused.", registry=registry)
        self.new_connections_target = Gauge(
            f"{ns}_new_connections_target", "1 for each vpn-shoot new connections are pinned to.", ["target"],
            registry=registry,
        )
        self.connections_closed = Counter(
            f"{ns}_connections_closed_total",
            "Pinned connections (conntrack entries) closed because their vpn-shoot stayed down.", ["target"],
            registry=registry,
        )
        self.announcements = Counter(f"{ns}_announcements_sent_total", "Announcements sent.", ["target"], registry=registry)
        self.announcement_errors = Counter(f"{ns}_announcement_errors_total", "Announcements the kernel refused.", ["target"], registry=registry)
        self.primary.set(-1)
        self.routes_consistent.set(0)
        self.pinning_consistent.set(1)
        for reason in SWITCH_REASONS:
            self.switches.labels(reason)
        for event in FAILOVER_EVENTS:
            self.bond_failovers.labels(event)
        for reason in NOTICE_REJECTS:
            self.notices_rejected.labels(reason)
        self.add_targets(targets)

    def add_targets(self, count: int) -> None:
        """Export the per-target series of targets 0..count-1 (idempotent): counters and the
        RTT histogram at 0, target_up 0 and target_state "unknown" until the first verdict.
        The dead-interval and lost-probe-deadline gauges appear with their first value: 0
        would be a wrong one."""
        per_target = (self.target_up, self.target_state, self.rtt, self.probes_sent, self.probes_lost,
                      self.probe_send_errors, self.announcements, self.announcement_errors, self.leaving_notices,
                      self.serving_notices,
                      self.new_connections_target, self.connections_closed)
        for j in range(count):
            for metric in per_target:
                metric.labels(j)
