"""The path-controller core in simulated time: hours of loss, many deaths.

    .venv/bin/python -m benchmarks.simulation [--hours 10] [--deaths 200] [--check]

Drives the daemon's own core (tests/unit/pathsim.py: the core, a simulated
network, a fake kernel) with the default settings:
* false verdicts and switches while the primary's path loses 20 % each way
  (2 ms RTT, 3 ms jitter) for ``--hours`` simulated hours;
* switch time after the primary dies, over ``--deaths`` seeds;
* probes per second per target, idle and under loss.
Prints a table and writes results/simulation.json. No kernel needed.
"""

from __future__ import annotations

import argparse
import sys
import time

from benchmarks import targets
from benchmarks.common import summary, write_result
from tests.unit.pathsim import Path, Simulation, config


def loss_run(hours: float, seed: int = 1) -> dict:
    seconds = hours * 3600
    sim = Simulation([Path(loss_each_way=0.2, rtt=0.002, jitter=0.003), Path(rtt=0.002, jitter=0.003)], seed=seed)
    result = sim.run(seconds)
    return {
        "simulated_seconds": seconds,
        "false_down_verdicts": len(result.times_entering_any("down")),
        "false_switches": sum(1 for _, reason, _ in result.switches if reason != "initial"),
        "probes_per_second_lossy": result.sent[0] / seconds,
        "probes_per_second_clean": result.sent[1] / seconds,
    }


def death_runs(runs: int) -> list[float]:
    """Seconds from the primary's death to the switch, one death per seed."""
    took = []
    for seed in range(runs):
        death = 5.0 + (seed % 100) * 0.0137
        sim = Simulation([Path(dead_from=death, rtt=0.002, jitter=0.003), Path(rtt=0.002, jitter=0.003)],
                         seed=seed, core_config=config(preference=(0, 1)))
        result = sim.run(death + 5.0)
        after = [t for t, reason, _ in result.switches if reason == "primary down"]
        took.append(after[0] - death if after else float("inf"))
    return took


def figures(result: dict) -> dict[str, float]:
    """The figures benchmarks/targets.py has targets for, in their units."""
    return {
        "false_switches": result["loss"]["false_switches"],
        "switch_p99": 1000 * result["switch_after_death"]["p99"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="benchmarks.simulation", description=__doc__.split("\n\n")[0])
    parser.add_argument("--hours", type=float, default=10.0)
    parser.add_argument("--deaths", type=int, default=200)
    targets.add_check_option(parser)
    args = parser.parse_args(argv)
    started = time.monotonic()
    loss = loss_run(args.hours)
    deaths = summary(death_runs(args.deaths))
    result = {"loss": loss, "switch_after_death": deaths, "wall_seconds": round(time.monotonic() - started, 1)}
    verdicts = targets.evaluate("simulation", figures(result))
    result["targets"] = targets.as_json(verdicts)
    print(f"{'figure':58} {'value':>14}")
    print(f"{'false switches, 20 % loss each way, ' + format(args.hours, 'g') + ' h':58} {loss['false_switches']:>14}")
    print(f"{'false down verdicts, same run':58} {loss['false_down_verdicts']:>14}")
    print(f"{'switch after the primary died, p50 / p99 (s)':58} {deaths['p50']:>6.3f} / {deaths['p99']:.3f}")
    print(f"{'probes per second, lossy / clean target':58} "
          f"{loss['probes_per_second_lossy']:>6.1f} / {loss['probes_per_second_clean']:.1f}")
    write_result("simulation", result)
    return targets.report(verdicts, args.check)


if __name__ == "__main__":
    sys.exit(main())
