"""Prometheus metrics of the tunnel-controller. Labels are bounded sets
(reasons, forms, operations): never addresses or pod IPs."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

from tunnel_controller.outcomes import Operation, PeerEvent, RejectReason, Repaired, SignalResult

PREFIX = "tunnel_controller"

FORMS = ("vpn2", "extended", "authenticated")  # announcement.wire's forms
OPERATIONS = (Operation.TUNNEL_CREATE, Operation.TUNNEL_REPLACE, Operation.TUNNEL_ADJUST, Operation.TUNNEL_DELETE,
              Operation.ROUTE_REPLACE, Operation.ROUTE_DELETE)
FAILED_OPERATIONS = (Operation.TUNNEL_ENSURE, Operation.TUNNEL_DELETE, Operation.ROUTE_REPLACE, Operation.ROUTE_DELETE)


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
        self.leaving_notices = Counter(
            f"{PREFIX}_leaving_notices", "notices sent while draining: send no new connections here", ["result"],
            registry=r,
        )
        self.serving_notices = Counter(
            f"{PREFIX}_serving_notices", "notices to kube-apiservers whose tunnel is in place: this vpn-shoot carries "
            "their traffic", ["result"], registry=r,
        )
        for result in ("sent", "failed"):
            self.leaving_notices.labels(result)
            self.serving_notices.labels(result)
        for reason in RejectReason:
            self.rejected.labels(reason)
        for form in FORMS:
            self.accepted.labels(form)
        for event in PeerEvent:
            self.peer_events.labels(event)
        for op in OPERATIONS:
            self.operations.labels(op)
        for op in FAILED_OPERATIONS:
            self.failures.labels(op)
        for obj in Repaired:
            self.repairs.labels(obj)
        for result in SignalResult:
            self.watchdog_signals.labels(result)
