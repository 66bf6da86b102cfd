"""benchmarks/connections.py's pure parts: one run's figures, runs summarised, figures against targets, the table."""

from __future__ import annotations

import asyncio
import math

from benchmarks import connections, targets
from benchmarks.common import OURS, VPN2
from benchmarks.connections import (
    Run,
    aggregate,
    busiest,
    connection_outcomes,
    failed_between,
    figures,
    inflight_breaks,
    result_name,
    stream_fates,
    table_rows,
)


def roll_run(failed: int = 0, gap: float = 0.05, broken: int = 0, errored_after: int = 2, duration: float = 20.0,
             failed_after_back: int = 0, moves: int = 0):
    return Run({"datagram_gap": [gap, 0.0, 0.0], "gap_until_back": [0.0, 0.0, 0.0], "gap_after_back": [gap, 0.0, 0.0],
                "exit": [5.1], "back_to_ready": [4.0]},
               {"connections": 400, "failed_connections": failed, "failed_until_back": failed - failed_after_back,
                "failed_after_back": failed_after_back, "inflight": 2, "inflight_broken_before_exit": broken,
                "inflight_errored_after_exit": errored_after, "apiservers": 3, "off_victim_at_exit": 3,
                "switches_leaving": 2, "switches_down": 0, "steering_moves": moves},
               duration=duration, events={"failed_connections_started": [1.0] * failed})


def stall_run(broken: int = 0, streams: int = 2):
    return Run({"switch": [0.6] * streams, "loss_setup": [3.5], "lifted_after_switch": [0.1]},
               {"streams": streams, "broken": broken, "resumed": streams - broken, "errored": broken, "silent": 0,
                "new_on_survivor": streams, "closed": 0}, duration=8.0)


def death_run(other_broken: int = 0, others: int = 3, error_after: float = 4.2, hung: int = 0):
    return Run({"error_after_kill": [error_after] * (3 - hung)},
               {"doomed": 3, "hung": hung, "other_streams": others, "other_broken": other_broken}, duration=30.0)


def result(ours: dict | None, vpn2: dict | None = None, scenarios=("roll", "stall", "death")) -> dict:
    fleets = {name: {"scenarios": got} for name, got in ((VPN2, vpn2), (OURS, ours)) if got is not None}
    return {"fleets": fleets, "scenarios": list(scenarios)}


def good() -> dict:
    return {"roll": aggregate([roll_run(), roll_run()], []), "stall": aggregate([stall_run()], []),
            "death": aggregate([death_run()], [])}


def verdicts(figures_: dict) -> dict[str, bool | None]:
    return {v.target.key: v.met for v in targets.evaluate("connections", figures_)}


def test_the_victim_is_the_vpn_shoot_most_name():
    assert busiest({"a": 1, "b": 1, "c": 0}) == 1
    assert busiest({"a": 0, "b": 1}) == 0  # a tie: the lower index
    assert busiest({"a": None, "b": 1}) == 1


def test_one_runs_connections_and_streams():
    results = [(1.0, "a", 0), (1.05, "b", ConnectionResetError()), (1.1, "c", asyncio.TimeoutError()),
               (1.15, "a", 1), (1.2, "b", TimeoutError())]
    attempts, failed, errors = connection_outcomes(results)
    assert (attempts, failed) == (5, 3)
    assert errors == {"ConnectionResetError": 1, "TimeoutError": 2}
    assert failed_between(results, 1.05, 1.2) == 2 and failed_between(results, float("-inf"), float("inf")) == 3
    assert inflight_breaks([None, 4.0, 5.0, 6.0], exited=5.0) == (2, 1)
    assert stream_fates([False, True, False, False], [True, False, False, True]) == (2, 1, 1)


def test_aggregate_pools_every_value_and_sums_counts_with_their_largest_run():
    got = aggregate([roll_run(failed=1, gap=0.3), roll_run(failed=4)], [{"run": 3, "error": "x"}],
                    [{"run": 4, "why": "no switch"}])
    assert got["runs"] == 4 and got["measured"] == 2
    assert got["failed"] == [{"run": 3, "error": "x"}] and got["discarded"] == [{"run": 4, "why": "no switch"}]
    assert got["seconds"]["datagram_gap"]["n"] == 6 and got["seconds"]["datagram_gap"]["max"] == 0.3
    assert got["counts"]["failed_connections"] == 5 and got["count_max"]["failed_connections"] == 4
    assert got["counts"]["connections"] == 800
    assert got["duration"]["mean"] == 20.0


def test_figures_of_good_runs_meet_every_target():
    got = figures(result(good()))
    assert got["roll_failed_connections"] == 0 and math.isclose(got["roll_gap_p99"], 50)
    assert got["stall_broken"] == 0 and got["death_other_broken"] == 0
    assert all(verdicts(got).values())


def test_each_miss_is_a_miss():
    ours = {"roll": aggregate([roll_run(failed=1, gap=0.15)], []), "stall": aggregate([stall_run(broken=1)], []),
            "death": aggregate([death_run(other_broken=1)], [])}
    assert not any(verdicts(figures(result(ours))).values())


def test_only_our_fleet_is_checked():
    bad = {"roll": aggregate([roll_run(failed=30, gap=4.0)], []), "stall": aggregate([stall_run(broken=2)], []),
           "death": aggregate([death_run(error_after=25.0)], [])}
    assert all(verdicts(figures(result(good(), vpn2=bad))).values())
    assert all(v is None for v in verdicts(figures(result(None, vpn2=bad))).values())


def test_not_run_is_not_measured_and_failed_or_nothing_to_measure_is_a_miss():
    only_roll = verdicts(figures(result({"roll": aggregate([roll_run()], [])})))
    assert only_roll["stall_broken"] is None and only_roll["roll_gap_p99"] is True
    failed = figures(result({"roll": aggregate([roll_run()], [{"run": 2, "error": "timed out"}])}))
    assert math.isnan(failed["roll_failed_connections"]) and math.isnan(failed["roll_gap_p99"])
    all_discarded = figures(result({"stall": aggregate([], [], [{"run": 1, "why": "no switch"}])}))
    assert math.isnan(all_discarded["stall_broken"])
    # A discarded run among measured ones leaves the figure to the others.
    some_discarded = figures(result({"stall": aggregate([stall_run()], [], [{"run": 2, "why": "no switch"}])}))
    assert some_discarded["stall_broken"] == 0
    # No stream went through the other vpn-shoot: nothing shows that they survive.
    nobody_else = figures(result({"death": aggregate([death_run(others=0)], [])}))
    assert math.isnan(nobody_else["death_other_broken"])


def test_the_table_puts_vpn2_beside_ours_and_names_the_targets():
    vpn2 = {"roll": aggregate([roll_run(failed=30, gap=4.0, broken=0, errored_after=2, failed_after_back=10)], []),
            "stall": aggregate([stall_run(broken=2)], [], [{"run": 2, "why": "no switch"}]),
            "death": aggregate([death_run(error_after=25.0, hung=1)], [])}
    rows = table_rows(result(good(), vpn2))

    def cells(name: str) -> list[tuple[str, ...]]:
        return [row[1:] for row in rows if name in row[0]]

    assert cells("new TCP connections failed") == [("30/400, max 30/run", "0/800, max 0/run", "= 0 failed")]
    assert cells("longest datagram gap") == [("0 / 4000 ms", "0 / 50 ms", "≤ 100 ms p99")]
    assert cells("until the pod came back / after")[0][:2] == ("20 / 10", "0 / 0")
    assert cells("the same after it came back")[0][:2] == ("0 / 4000 ms", "0 / 50 ms")
    assert cells("primary switches of the kube-apiservers")[0][:2] == ("2 / 0", "4 / 0")
    assert cells("server-steering moves")[0][:2] == ("0", "0")
    assert cells("broken before the tunnel-controller exited") == [("0/2", "0/4", "(measured)")]
    assert cells("errored after the exit")[0][:2] == ("2/2", "4/4")
    assert cells("open TCP streams broken") == [("2/2", "0/2", "= 0 broken")]
    assert cells("resumed / errored / silent")[0][:2] == ("0 / 2 / 0", "2 / 0 / 0")
    assert cells("runs discarded")[0][:2] == ("1", "0")
    assert cells("putting the loss in place") == [("3500 / 3500 ms", "3500 / 3500 ms", "(harness)")]
    assert cells("through the other vpn-shoot broken") == [("0/3", "0/3", "= 0 broken")]
    assert cells("error of the dead vpn-shoot's streams") == [("25000 / 25000 ms", "4200 / 4200 ms",
                                                               "(info: no SOCK_DESTROY)")]
    assert cells("without an error")[0][:2] == ("1/3", "0/3")
    assert cells("one run")[0][:2] == ("20.0 / 20.0 s", "20.0 / 20.0 s")
    only_ours = [row for row in table_rows(result(good(), scenarios=["stall"]))]
    assert only_ours[0][1] == "" and only_ours[0][2] == "0/2"
    assert all("roll" not in row[0] for row in only_ours)


def test_result_names_keep_partial_runs_apart():
    everything = list(connections.SCENARIOS)
    assert result_name(everything, list(connections.SETUPS)) == "connections"
    assert result_name(["roll"], list(connections.SETUPS)) == "connections-roll"
    assert result_name(everything, [OURS]) == "connections-ours"


def test_the_fleets_are_server_events_with_the_drain_added():
    ours, vpn2 = connections.SETUPS[OURS], connections.SETUPS[VPN2]
    assert ours.tc_env == {"DRAIN_SECONDS": "5"}
    assert vpn2.tc_env == {"SERVER_STEERING": "false", "DRAIN_SECONDS": "0"}
    assert vpn2.fleet.path_controller == "benchmarks.vpn2_profile" and not vpn2.pinning and ours.pinning
