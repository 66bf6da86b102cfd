"""Prometheus metrics of the tunnel-controller. Labels are bounded sets
(reasons, forms, operations): never addresses or pod IPs."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

PREFIX = "tunnel_controller"

REJECT_REASONS = (
    # announcement.wire
    "oversized",
    "malformed",
    "bad-address",
    "unauthenticated",
    "bad-mac",
    "source-mismatch",
    "stale",
    # ours
    "foreign-source",
    "rate-limited",
    "replayed",
    "peer-limit",
)
FORMS = ("vpn2", "extended", "authenticated")
PEER_EVENTS = ("new", "pod-ip-changed", "pod-ip-flapping", "expired", "adopted")
OPERATIONS = ("tunnel_create", "tunnel_replace", "tunnel_adjust", "tunnel_delete", "route_replace", "route_delete")
FAILED_OPERATIONS = ("tunnel_ensure", "tunnel_delete", "route_replace", "route_delete")
REPAIRED = ("tunnel", "route")


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.peers = Gauge(f"{PREFIX}_peers", "kube-apiservers known (announcing, or adopted at start)", registry=r)
        self.tunnels = Gauge(f"{PREFIX}_tunnels", "ip6tnl devices in place, up and as specified", registry=r)
        self.back_routes = Gauge(f"{PREFIX}_back_routes", "back-routes to pod IPs in place", registry=r)
        self.peers_not_ready = Gauge(
            f"{PREFIX}_peers_not_ready", "peers whose tunnel or back-route is missing or failed", registry=r
        )
        self.listening = Gauge(f"{PREFIX}_listening", "1 while the UDP6 announcement socket is open", registry=r)
        self.accepted = Counter(
            f"{PREFIX}_announcements_accepted", "announcements accepted, by wire form", ["form"], registry=r
        )
        self.rejected = Counter(
            f"{PREFIX}_announcements_rejected",
            "datagrams ignored, by reason; none of them changed the kernel",
            ["reason"],
            registry=r,
        )
        self.peer_events = Counter(f"{PREFIX}_peer_events", "peer lifecycle events", ["event"], registry=r)
        self.operations = Counter(
            f"{PREFIX}_tunnel_operations", "kernel changes made, by operation", ["op"], registry=r
        )
        self.failures = Counter(
            f"{PREFIX}_tunnel_failures", "kernel changes that failed (retried with backoff)", ["op"], registry=r
        )
        self.repairs = Counter(
            f"{PREFIX}_repairs", "our objects found missing or changed behind our back, then restored", ["object"],
            registry=r,
        )
        self.contested = Counter(
            f"{PREFIX}_pod_ip_conflicts", "pod IPs newly claimed by more than one peer (the newer claim wins)",
            registry=r,
        )
        self.resyncs = Counter(f"{PREFIX}_resyncs", "full comparisons with the kernel", registry=r)
        self.event_overflows = Counter(
            f"{PREFIX}_netlink_event_overflows", "netlink event streams lost (a full resync follows)", registry=r
        )
        self.watchdog_timeouts = Counter(
            f"{PREFIX}_watchdog_timeouts", "receive timeouts (no accepted announcement in WATCHDOG_TIMEOUT)", registry=r
        )
        self.watchdog_triggers = Counter(
            f"{PREFIX}_watchdog_triggers", "times the watchdog threshold was reached", registry=r
        )
        self.watchdog_signals = Counter(
            f"{PREFIX}_watchdog_signals", "SIGHUPs sent to OpenVPN management ports, by result", ["result"], registry=r
        )
        for reason in REJECT_REASONS:
            self.rejected.labels(reason)
        for form in FORMS:
            self.accepted.labels(form)
        for event in PEER_EVENTS:
            self.peer_events.labels(event)
        for op in OPERATIONS:
            self.operations.labels(op)
        for op in FAILED_OPERATIONS:
            self.failures.labels(op)
        for obj in REPAIRED:
            self.repairs.labels(obj)
        for result in ("ok", "failed"):
            self.watchdog_signals.labels(result)
