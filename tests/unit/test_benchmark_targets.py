"""The benchmarks' target check (benchmarks/targets.py): pure, no benchmark runs."""

from __future__ import annotations

import argparse

import pytest

from benchmarks import targets
from benchmarks.targets import COMPARISONS, TARGETS, Target, Verdict, evaluate, report


def test_every_target_is_well_formed_and_unique():
    keys = [(t.benchmark, t.key) for t in TARGETS]
    assert len(keys) == len(set(keys))
    for t in TARGETS:
        assert t.comparison in COMPARISONS and t.figure and t.source, t
    assert {t.benchmark for t in TARGETS} >= {"path_controller", "tunnel_controller", "end_to_end", "image"}


def test_the_text_a_table_prints():
    assert targets.target("path_controller", "switch_p99").text == "≤ 500 ms"
    assert targets.target("path_controller", "false_switches").text == "= 0 switches"
    assert targets.target("tunnel_controller", "flood_rate").text == "≥ 9 900 /s"
    assert targets.target("tunnel_controller", "sigterm_code").text == "= 0"


@pytest.mark.parametrize(
    ("comparison", "value", "measured", "met"),
    [
        ("<=", 500, 499.9, True), ("<=", 500, 500, True), ("<=", 500, 500.1, False),
        (">=", 9900, 9900, True), (">=", 9900, 9899, False),
        ("==", 0, 0, True), ("==", 0, 1, False),
        ("<=", 500, float("inf"), False), ("<=", 500, float("nan"), False), ("==", 0, float("nan"), False),
    ],
)
def test_met_by(comparison, value, measured, met):
    assert Target("b", "k", "figure", comparison, value, "", "test").met_by(measured) is met


def test_evaluate_gives_every_target_a_verdict_and_not_measured_is_none():
    figures = {"switch_p99": 437.0, "false_switches": 1, "rss": None}
    verdicts = {v.target.key: v for v in evaluate("path_controller", figures)}
    assert set(verdicts) == {t.key for t in TARGETS if t.benchmark == "path_controller"}
    assert verdicts["switch_p99"].met is True
    assert verdicts["false_switches"].met is False
    assert verdicts["rss"].met is None and verdicts["idle_cpu"].met is None


def test_a_figure_without_a_target_is_an_error_so_a_renamed_one_cannot_go_unchecked():
    with pytest.raises(KeyError, match="switch_p95"):
        evaluate("path_controller", {"switch_p95": 300.0})
    with pytest.raises(KeyError, match="no targets"):
        evaluate("no_such_benchmark", {})


def test_report_exit_status_and_lines(capsys):
    verdicts = evaluate("path_controller", {"switch_p99": 620.0, "false_switches": 0, "rss": 49.1})
    assert report(verdicts, check=False) == 0
    assert report(verdicts, check=True) == 1
    out = capsys.readouterr().out
    assert "MISSED        primary vpn-shoot dies → all routes moved, p99: 620 ms, target ≤ 500 ms" in out
    assert "met           false switches under 20 % loss each way: 0 switches, target = 0 switches" in out
    assert "not measured  idle CPU" in out
    assert "1 target(s) missed: switch_p99" in out

    all_met = evaluate("path_controller", {"switch_p99": 400.0, "false_switches": 0})
    assert report(all_met, check=True) == 0


def test_as_json_names_the_target_next_to_each_figure():
    (verdict,) = [v for v in evaluate("image", {"venv_gzip_tar": 5.3}) if v.target.key == "venv_gzip_tar"]
    entry = targets.as_json([verdict])["venv_gzip_tar"]
    assert entry == {"figure": verdict.target.figure, "measured": 5.3, "unit": "MiB", "target": "≤ 10 MiB",
                     "met": True, "source": verdict.target.source}


def test_check_option():
    parser = argparse.ArgumentParser()
    targets.add_check_option(parser)
    assert parser.parse_args(["--check"]).check is True
    assert parser.parse_args([]).check is False


def test_the_benchmarks_figures_all_have_targets():
    """Each benchmark's figures() returns only keys targets.py knows (checked on sample results)."""
    from benchmarks import end_to_end, image, path_controller, tunnel_controller

    pc = {"switch_seconds": {"p99": 0.437}, "loss": {"false_switches": 0, "probes_per_second_on_lossy_target": 14.5},
          "idle": {"probes_per_second_per_target": 10.0, "rss_mib": 49.1, "cpu_percent_of_one_core": 0.23}}
    assert all(v.met for v in evaluate("path_controller", path_controller.figures(pc)))

    summary = {"p50": 0.4, "p99": 0.45}
    e2e = {"shoot_killed_seconds": {"ours": summary}, "server_killed_seconds": {"ours": {"p99": 0.2}},
           "server_killed_tcp_broken": 0, "server_kill_and_failback_switches": {"ours": 0},
           "server_blackholed_seconds": {"monitor_on": [{"monitor": end_to_end.RECOMMENDED_MONITOR, "p99": 0.9}]},
           "false_switches": {"ours": 0}, "idle_resources": {"a path-controller": {"profile": "ours", "rss_mib": 49,
                                                                                   "cpu_percent_of_one_core": 0.5}}}
    assert all(v.met for v in evaluate("end_to_end", end_to_end.figures(e2e)))
    assert all(v.met is None for v in evaluate("end_to_end", end_to_end.figures(
        {key: None for key in e2e} | {"server_killed_tcp_broken": None})))

    tc = {"first_announcement": {"route_visible": {"p99_ms": 12.4}, "echo_answered": {"p99_ms": 13.3}},
          "steady_state": {"rss_mib": 48.9, "cpu_percent_of_one_core": 0.13},
          "flood": {"rate_per_s": 9993, "rss_peak_mib": 49.3, "rss_before_mib": 48.9, "healthz": {"unanswered": 0}},
          "self_heal": {"max_ms": 25.1}, "sigterm": {"exit_ms": 191.7, "exit_code": 0},
          "thousand_sources": {"sources": 1000, "converged_s": None, "healthz_during": {"unanswered": 0},
                               "sigterm_exit_ms": 237.4}}
    verdicts = {v.target.key: v.met for v in evaluate("tunnel_controller", tunnel_controller.figures(tc))}
    assert verdicts.pop("thousand_converged") is False  # never converged: missed, not skipped
    assert all(verdicts.values())
    tc["thousand_sources"]["sources"] = 50
    fewer = {v.target.key: v.met for v in evaluate("tunnel_controller", tunnel_controller.figures(tc))}
    assert fewer["thousand_converged"] is None, "50 sources say nothing about the 1000-source target"

    img = {"sizes": {"venv_gzip_tar_bytes": 5.3 * 1024 * 1024}, "startup": {"a": {"cpu_median_s": 0.4}}}
    assert all(v.met for v in evaluate("image", image.figures(img)))


def test_verdict_line_without_unit():
    t = targets.target("tunnel_controller", "sigterm_code")
    assert Verdict(t, 0).line == "met           SIGTERM exit status: 0, target = 0"
