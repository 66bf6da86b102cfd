"""Both daemons export every labelled series from the start, at 0, so that a
query for "never happened" reads 0 and a test can demand the series exists."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from path_controller.bondwatch import FAILOVER_EVENTS
from path_controller.metrics import PathMetrics
from path_controller.selection import SWITCH_REASONS
from tests.netns.nsutil import metric_value
from tunnel_controller import metrics as tunnel_metrics
from tunnel_controller.outcomes import PeerEvent, RejectReason, Repaired

# Gauges whose 0 would be a false reading: they appear with their first value.
SET_ON_FIRST_VALUE = {"path_controller_dead_interval_seconds", "path_controller_late_after_seconds"}


def path_metrics_text(targets: int) -> str:
    registry = CollectorRegistry()
    PathMetrics(registry, targets=targets)
    return generate_latest(registry).decode()


def test_path_controller_exports_every_target_reason_and_event_at_0():
    text = path_metrics_text(targets=3)
    for j in ("0", "1", "2"):
        for name in ("path_controller_probes_sent_total", "path_controller_probes_lost_total",
                     "path_controller_probe_send_errors_total", "path_controller_announcements_sent_total",
                     "path_controller_announcement_errors_total", "path_controller_probe_rtt_seconds_count",
                     "path_controller_target_up"):
            assert metric_value(text, name, target=j) == 0, (name, j)
        state = "path_controller_target_state"
        assert metric_value(text, state, target=j, **{state: "unknown"}) == 1
    for reason in SWITCH_REASONS:
        assert metric_value(text, "path_controller_switches_total", reason=reason) == 0
    for event in FAILOVER_EVENTS:
        assert metric_value(text, "path_controller_bond_failovers_total", event=event) == 0
    with pytest.raises(AssertionError, match="target"):
        metric_value(text, "path_controller_probes_sent_total", target="3")


def test_every_labelled_path_series_has_samples_once_targets_are_known():
    registry = CollectorRegistry()
    PathMetrics(registry, targets=2)
    for family in registry.collect():
        if family.name not in SET_ON_FIRST_VALUE:
            assert family.samples, f"{family.name} exports nothing until its first event"


def test_add_targets_is_idempotent_and_targets_default_to_none():
    registry = CollectorRegistry()
    metrics = PathMetrics(registry)
    assert "path_controller_probes_sent_total{" not in generate_latest(registry).decode()
    metrics.add_targets(2)
    metrics.probes_sent.labels(1).inc()
    metrics.add_targets(2)
    text = generate_latest(registry).decode()
    assert metric_value(text, "path_controller_probes_sent_total", target="1") == 1


def test_tunnel_controller_exports_every_known_label_value_at_0():
    text = generate_latest(tunnel_metrics.Metrics().registry).decode()
    known = {
        ("tunnel_controller_announcements_rejected_total", "reason"): tuple(RejectReason),
        ("tunnel_controller_announcements_accepted_total", "form"): tunnel_metrics.FORMS,
        ("tunnel_controller_peer_events_total", "event"): tuple(PeerEvent),
        ("tunnel_controller_tunnel_operations_total", "op"): tunnel_metrics.OPERATIONS,
        ("tunnel_controller_tunnel_failures_total", "op"): tunnel_metrics.FAILED_OPERATIONS,
        ("tunnel_controller_repairs_total", "object"): tuple(Repaired),
        ("tunnel_controller_watchdog_signals_total", "result"): ("ok", "failed"),
    }
    for (name, label), values in known.items():
        for value in values:
            assert metric_value(text, name, **{label: value}) == 0, (name, value)


def test_an_unknown_metric_or_label_fails_instead_of_reading_0():
    text = path_metrics_text(targets=1)
    with pytest.raises(AssertionError, match="path_controller_switchez_total"):
        metric_value(text, "path_controller_switchez_total", reason="primary down")
    with pytest.raises(AssertionError, match="exported under that name"):
        metric_value(text, "path_controller_switches_total", reason="primary-down")
