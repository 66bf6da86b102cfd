"""benchmarks/server_events.py's pure parts: runs summarised, figures against targets, the table."""

from __future__ import annotations

import math

from benchmarks import server_events, targets
from benchmarks.common import OURS, VPN2
from benchmarks.server_events import Run, aggregate, figures, result_name, table_rows


def roll_run(kill: float = 0.12, back: float = 0.06, separation: float = 0.2, tcp: bool = True, switches: float = 0):
    pods = ("a", "b", "c")
    return Run({"kill_gap": dict.fromkeys(pods, kill), "return_gap": dict.fromkeys(pods, back),
                "separation": dict.fromkeys(pods, separation)}, tcp, switches=switches, note="SIGTERM")


def black_run(again: float = 0.8, timeouts: int = 0):
    return Run({"traffic_again": {"a": again, "b": again}, "separation": {"a": again, "b": again}}, True, timeouts,
               flags={"tap0 carrier up when traffic was back": True}, moves={"unreachable": 5})


def result(ours: dict | None, vpn2: dict | None = None) -> dict:
    fleets = {name: {"scenarios": got, "round_trip_ms": 3.2, "idle_cpu_percent": 41.0, "wan": None} for name, got in ((VPN2, vpn2), (OURS, ours))
              if got is not None}
    return {"fleets": fleets, "scenarios": ["roll", "blackhole"], "signal": "alternate", "blackhole_timeout": 90.0,
            "wan": None}


def verdicts(figures_: dict) -> dict[str, bool | None]:
    return {v.target.key: v.met for v in targets.evaluate("server_events", figures_)}


def test_aggregate_summarises_every_pod_of_every_run_and_counts_the_rest():
    got = aggregate([roll_run(kill=0.1), roll_run(kill=0.3, tcp=False, switches=2)], [{"run": 3, "error": "x"}])
    assert got["runs"] == 3 and got["failed"] == [{"run": 3, "error": "x"}]
    assert got["seconds"]["kill_gap"]["n"] == 6
    assert got["seconds"]["kill_gap"]["p99"] == 0.3 and got["seconds"]["kill_gap"]["p50"] in (0.1, 0.3)
    assert got["tcp_survived"] == 1 and got["switches"] == 2
    black = aggregate([black_run(), black_run(again=90.0, timeouts=2)], [])
    assert black["timeouts"] == 2
    assert black["flags"] == {"tap0 carrier up when traffic was back": 2}
    assert black["moves"] == {"unreachable": 10}


def test_figures_of_a_good_run_meet_every_target():
    ours = {"roll": aggregate([roll_run(), roll_run()], []), "blackhole": aggregate([black_run()], [])}
    got = figures(result(ours))
    assert math.isclose(got["kill_p99"], 120) and math.isclose(got["return_gap_p99"], 60)
    assert math.isclose(got["blackhole_p99"], 800) and math.isclose(got["separation_max"], 800)
    assert got["switches"] == 0 and got["tcp_broken"] == 0
    assert all(verdicts(got).values())


def test_each_miss_is_a_miss():
    ours = {"roll": aggregate([roll_run(kill=0.31, back=0.2, separation=2.5, tcp=False, switches=1)], []),
            "blackhole": aggregate([black_run(again=90.0, timeouts=2)], [])}
    assert not any(verdicts(figures(result(ours))).values())


def test_only_our_fleet_is_checked():
    slow = {"roll": aggregate([roll_run(kill=3.0, back=4.0, separation=4.0, tcp=False, switches=3)], [])}
    good = {"roll": aggregate([roll_run()], [])}
    assert all(v is not False for v in verdicts(figures(result(good, vpn2=slow))).values())
    assert all(v is None for v in verdicts(figures(result(None, vpn2=slow))).values())


def test_a_scenario_not_run_is_not_measured_and_a_failed_run_is_a_miss():
    only_roll = verdicts(figures(result({"roll": aggregate([roll_run()], [])})))
    assert only_roll["blackhole_p99"] is None and only_roll["kill_p99"] is True
    failed = {"roll": aggregate([roll_run()], [{"run": 2, "error": "timed out"}])}
    got = figures(result(failed))
    assert math.isnan(got["kill_p99"]) and math.isnan(got["switches"])
    assert verdicts(got)["kill_p99"] is False
    nothing = {"roll": aggregate([], [{"run": 1, "error": "timed out"}])}
    assert verdicts(figures(result(nothing)))["return_gap_p99"] is False


def test_the_table_puts_vpn2_beside_ours_and_names_the_targets():
    ours = {"roll": aggregate([roll_run()], []), "blackhole": aggregate([black_run()], [])}
    vpn2 = {"roll": aggregate([roll_run(kill=0.4, back=1.5, separation=1.5, tcp=False, switches=1)], []),
            "blackhole": aggregate([black_run(again=90.0, timeouts=2)], [])}
    rows = table_rows(result(ours, vpn2))

    def cells(name: str) -> list[tuple[str, ...]]:
        return [row[1:] for row in rows if name in row[0]]

    assert cells("kill → traffic again") == [("400 / 400 ms", "120 / 120 ms", "≤ 300 ms p99")]
    assert cells("return → longest gap") == [("1500 / 1500 ms", "60 / 60 ms", "≤ 100 ms p99")]
    roll_tcp, black_tcp = cells("open TCP stream survived")
    assert roll_tcp == ("0/1", "1/1", "= 0 broken") and black_tcp[:2] == ("1/1", "1/1")
    assert cells("primary vpn-shoot switches")[0][:2] == ("1", "0")
    assert cells("longest separation")[1] == ("90000 / 90000 ms", "800 / 800 ms", "≤ 2 000 ms max")
    assert cells("not answered within 90 s") == [("2", "0", "(measured)")]
    assert cells("round trip through the VPN")[0][:2] == ("3.2 ms", "3.2 ms")
    assert cells("CPU idle")[0][:2] == ("41 %", "41 %")
    only_ours = {row[0]: row[1:] for row in table_rows(result(ours))}
    assert only_ours["no event: round trip through the VPN, median"][0] == ""


def test_result_names_keep_partial_runs_apart():
    everything = list(server_events.SCENARIOS)
    assert result_name(everything, list(server_events.FLEETS), None) == "server_events"
    assert result_name(["roll"], list(server_events.FLEETS), None) == "server_events-roll"
    assert result_name(everything, [OURS], "delay 30ms") == "server_events-ours-wan"
