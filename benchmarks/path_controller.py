"""Benchmark of the path-controller on a real kernel (bond topology, no OpenVPN).

    .venv/bin/python -m kernel_sandbox -- .venv/bin/python -m benchmarks.path_controller \
        [--runs 20] [--loss-seconds 600] [--idle-seconds 60] [--check]

Measures, with the default settings:
* switch time: the primary vpn-shoot disappears from every server (its
  switch-side links go down) → the last shoot route points at the other
  vpn-shoot's tunnel, from netlink route events in the apiserver namespace;
* false switches while the primary's path loses 20 % in both directions;
* probes per second per target, idle and under loss;
* RSS and CPU (share of one core) of the daemon while idle.
Prints a table with each figure's target (benchmarks/targets.py) and writes
results/path_controller.json; ``--check`` exits 1 when a target is missed.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from ipaddress import ip_network

from benchmarks import targets
from benchmarks.common import Namespaces, cpu_seconds, environment, rss_mib, summary, write_result
from netlink_adapter.events import EventStream
from tests.netns import nsutil
from tests.netns.topology import BondLab

POD_IP = "10.96.3.17"
NETWORKS = {
    "SHOOT_SERVICE_NETWORKS": "100.64.0.0/13,fd00:64::/108",
    "SHOOT_POD_NETWORKS": "100.96.0.0/11,fd00:96::/56",
    "SHOOT_NODE_NETWORKS": "10.250.0.0/16",
}
ROUTED = {ip_network(n) for v in NETWORKS.values() for n in v.split(",")}


async def metrics(ns: str) -> str:
    return (await nsutil.http_get_async(ns, 8080, "/metrics"))[1]


async def metric(ns: str, name: str, **labels) -> float:
    return nsutil.metric_value(await metrics(ns), name, **labels)


class RouteWatch:
    """Follows the shoot routes of a namespace through netlink events."""

    def __init__(self, ns: str):
        self.ns = ns
        self.oif: dict = {}
        self.changed = asyncio.Event()
        self.stream = EventStream(links=False, netns=ns)
        self.task: asyncio.Task | None = None

    async def start(self) -> None:
        await self.stream.start()
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        async for event in self.stream:
            if event.route.dst in ROUTED:
                self.oif[event.route.dst] = None if event.deleted else event.route.oif
                self.changed.set()

    async def wait_all(self, oif: int, timeout: float) -> float:
        """Monotonic time at which every shoot route pointed at ``oif``."""
        deadline = time.monotonic() + timeout
        while not all(self.oif.get(n) == oif for n in ROUTED):
            self.changed.clear()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"routes did not all move to ifindex {oif}")
            try:
                await asyncio.wait_for(self.changed.wait(), remaining)
            except asyncio.TimeoutError:
                pass
        return time.monotonic()

    def close(self) -> None:
        if self.task:
            self.task.cancel()
        self.stream.close()


async def current_primary(ns: str) -> int:
    return int(await metric(ns, "path_controller_primary_target"))


async def wait_metric(ns: str, name: str, value: float, timeout: float = 30, **labels) -> None:
    async def check():
        return await metric(ns, name, **labels) == value

    await nsutil.wait_for(check, timeout=timeout, interval=0.1, message=f"{name}{labels} == {value}")


async def run(args) -> dict:
    async with Namespaces(nsutil.REPO / "results" / "bench-logs") as spaces:
        lab = await BondLab.create(spaces.make_netns, spaces.ipr_factory)
        seed = await lab.add_seed("apiserver", 0x1234)
        shoots = [await lab.add_shoot(0), await lab.add_shoot(1)]
        for shoot in shoots:
            await lab.wait_reachable(seed, shoot)
        proc = spaces.processes.start(
            seed.ns,
            [nsutil.PYTHON, "-m", "path_controller"],
            env=nsutil.daemon_env(POD_IP=POD_IP, **NETWORKS),
            name="path-controller",
        )
        watch = RouteWatch(seed.ns)
        await watch.start()
        try:
            await nsutil.wait_for(
                lambda: nsutil.http_get_async(seed.ns, 8080, "/readyz"), timeout=60, message="daemon up"
            )
            await wait_metric(seed.ns, "path_controller_routes_consistent", 1)
            pid = proc.popen.pid

            # Idle: probe rate, RSS, CPU.
            sent0 = await metric(seed.ns, "path_controller_probes_sent_total", target="0")
            cpu0, t0 = cpu_seconds(pid), time.monotonic()
            await asyncio.sleep(args.idle_seconds)
            idle_elapsed = time.monotonic() - t0
            idle = {
                "cpu_percent_of_one_core": 100 * (cpu_seconds(pid) - cpu0) / idle_elapsed,
                "rss_mib": rss_mib(pid),
                "probes_per_second_per_target": (
                    await metric(seed.ns, "path_controller_probes_sent_total", target="0") - sent0
                )
                / idle_elapsed,
            }
            print(f"idle: {idle}", flush=True)

            # Switch time after the primary dies.
            switch_times = []
            for run_index in range(args.runs):
                primary = await current_primary(seed.ns)
                other = 1 - primary
                tunnel = seed.ifindex[f"bond0-ip6tnl{other}"]
                started = time.monotonic()
                await lab.cut(shoots[primary])
                finished = await watch.wait_all(tunnel, timeout=15)
                switch_times.append(finished - started)
                print(f"run {run_index + 1}: {primary} → {other} in {1000 * (finished - started):.0f} ms", flush=True)
                await lab.restore(shoots[primary])
                await wait_metric(seed.ns, "path_controller_target_up", 1, target=str(primary))
                await asyncio.sleep(0.5)

            # False switches under 20 % loss each way on the primary's path.
            primary = await current_primary(seed.ns)
            switches0 = await metric(seed.ns, "path_controller_switches_total", reason="primary down")
            sent0 = await metric(seed.ns, "path_controller_probes_sent_total", target=str(primary))
            lab.netem(shoots[primary], f"loss {args.loss_percent}%")
            t0 = time.monotonic()
            await asyncio.sleep(args.loss_seconds)
            loss_elapsed = time.monotonic() - t0
            false_switches = await metric(seed.ns, "path_controller_switches_total", reason="primary down") - switches0
            loss_rate = (
                await metric(seed.ns, "path_controller_probes_sent_total", target=str(primary)) - sent0
            ) / loss_elapsed
            dropped = lab.netem_counters(shoots[primary])  # what the loss really was
            lab.netem(shoots[primary], None)
            rss_after = rss_mib(pid)
        finally:
            watch.close()
    return {
        "benchmark": "path_controller",
        "environment": environment(),
        "settings": "defaults (probe 100 ms, burst 15 ms, dead 0.35 s, min lost 12, rise 3)",
        "switch_seconds": summary(switch_times),
        "switch_runs": switch_times,
        "loss": {
            "percent_each_way": args.loss_percent,
            "seconds": loss_elapsed,
            "false_switches": false_switches,
            "probes_per_second_on_lossy_target": loss_rate,
            "netem_dropped_share": dropped.dropped / max(1, dropped.sent + dropped.dropped),
        },
        "idle": idle,
        "rss_mib_at_end": rss_after,
    }


def figures(result: dict) -> dict[str, float]:
    """The figures benchmarks/targets.py has targets for, in their units."""
    return {
        "switch_p99": 1000 * result["switch_seconds"]["p99"],
        "false_switches": result["loss"]["false_switches"],
        "probes_per_second_idle": result["idle"]["probes_per_second_per_target"],
        "probes_per_second_loss": result["loss"]["probes_per_second_on_lossy_target"],
        "rss": result["idle"]["rss_mib"],
        "idle_cpu": result["idle"]["cpu_percent_of_one_core"],
    }


def print_table(result: dict) -> None:
    s = result["switch_seconds"]
    loss = result["loss"]
    idle = result["idle"]

    def target(key: str) -> str:
        return targets.target("path_controller", key).text

    rows = [
        ("primary vpn-shoot dies → all routes moved, p50", f"{1000 * s['p50']:.0f} ms", ""),
        ("  p99 / max over " + str(s["n"]) + " runs", f"{1000 * s['p99']:.0f} / {1000 * s['max']:.0f} ms",
         f"{target('switch_p99')} (p99)"),
        (f"false switches, {loss['percent_each_way']:g} % loss each way, {loss['seconds']:.0f} s",
         f"{loss['false_switches']:.0f}", target("false_switches")),
        ("  packets the loss dropped (netem counters)", f"{100 * loss['netem_dropped_share']:.1f} %", ""),
        ("probes/s per target, idle", f"{idle['probes_per_second_per_target']:.1f}", target("probes_per_second_idle")),
        ("probes/s to the lossy target", f"{loss['probes_per_second_on_lossy_target']:.1f}",
         target("probes_per_second_loss")),
        ("RSS", f"{idle['rss_mib']:.1f} MiB", target("rss")),
        ("idle CPU (one core)", f"{idle['cpu_percent_of_one_core']:.2f} %", target("idle_cpu")),
    ]
    width = max(len(r[0]) for r in rows)
    print(f"\n{'figure'.ljust(width)}  {'measured':>18}  target")
    for name, value, target_text in rows:
        print(f"{name.ljust(width)}  {value:>18}  {target_text}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--loss-seconds", type=float, default=600)
    parser.add_argument("--loss-percent", type=float, default=20)
    parser.add_argument("--idle-seconds", type=float, default=60)
    targets.add_check_option(parser)
    args = parser.parse_args()
    result = asyncio.run(run(args))
    verdicts = targets.evaluate("path_controller", figures(result))
    result["targets"] = targets.as_json(verdicts)
    print_table(result)
    write_result("path_controller", result)
    return targets.report(verdicts, args.check)


if __name__ == "__main__":
    sys.exit(main())
