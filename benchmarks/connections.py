"""Open TCP connections across vpn-shoot path changes end to end (issue 13): our fleet beside a vpn2 fleet.

    .venv/bin/python -m kernel_sandbox --timeout 3000 --mem 4G -- .venv/bin/python -m benchmarks.connections \\
        [--runs 5] [--scenarios roll,stall,death] [--fleets vpn2-profile,ours] [--check]

The two fleets are built one after the other on the HA topology (2 OpenVPN servers,
3 kube-apiservers, 2 vpn-shoots, vpn2's client timing), with the settings of
``benchmarks.server_events.FLEETS`` plus the tunnel-controller's drain:

* ``ours``: the defaults (connection pinning, ``PATH_MODE=primary``, ``PIN_CLOSE_AFTER``
  1.5 s, split-tolerant bonds, server steering), except ``DRAIN_SECONDS=5``: the
  default drain (20 s) only makes a roll longer, the pod goes away when it ends;
* ``vpn2-profile``: vpn2's probe timing without pinning or steering
  (benchmarks/vpn2_profile.py), ``BOND_SPLIT_TOLERANT=false``, ``SERVER_STEERING=false``,
  and ``DRAIN_SECONDS=0``: vpn2 has no drain, SIGTERM means exit at once.

Every run starts with every bond on server 0 and every daemon ready. The victim is
the vpn-shoot most kube-apiservers use as primary (in ``death``: that carries most
streams). Scenarios:

* ``roll``, a planned roll: the victim's tunnel-controller gets SIGTERM; once it has
  exited the pod is gone (its OpenVPN clients killed) for 3 s, then back (clients and
  tunnel-controller started, every daemon ready). Throughout: 20 new TCP connections/s
  over all kube-apiservers, a UDP stream (20/s) from each, an open TCP stream from each
  kube-apiserver whose primary is the victim. Figures: new connections failed; the
  longest datagram gap of a stream from SIGTERM until ready again; open streams broken
  before the tunnel-controller exited, and those that errored after (the pod gone);
* ``stall``, a forced switch of a live path: the victim's VPN path loses everything
  (netem on its taps) until every kube-apiserver that used it switched, then it is
  lifted. Figures: open TCP streams (one from each switching kube-apiserver, opened
  before) broken, resumed. The loss is shown by its qdisc counters; a run where no
  kube-apiserver switched measured nothing and is discarded (and reported);
* ``death``: the victim vpn-shoot killed. Before it, streams through both vpn-shoots:
  one from each kube-apiserver, and more from kube-apiserver 0 until each vpn-shoot
  carries two. In our fleet kube-apiserver 0 runs ``PATH_MODE=spread`` for this
  scenario (restarted before its first run and after its last), so both vpn-shoots
  carry streams whatever the primaries are; the vpn2 fleet cannot spread, its streams
  follow the primaries (when all are the same, no stream goes through the other
  vpn-shoot and that figure is not measured). Figures: kill → error of the victim's
  streams (informative: UML's 6.1 kernel lacks SOCK_DESTROY, docs/pinning.md, so the
  reset comes with the stream's next TCP retransmission), and streams through the
  other vpn-shoot broken. Restored afterwards: the pod started again.

Prints a table (figure | vpn2 profile | ours | target, benchmarks/targets.py) and writes
results/connections.json (a partial run: a suffixed file). ``--check`` exits 1 when a
figure of ours misses its target.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from benchmarks import server_events, targets
from benchmarks.common import (
    OURS,
    RESULTS,
    VPN2,
    Namespaces,
    environment,
    log,
    p50_p99_ms,
    print_comparison,
    summary,
    write_result,
)
from benchmarks.server_events import FLEETS, Fleet
from netlink_adapter.links import link_by_name
from steering.core import MOVE_REASONS
from tests.netns import nsutil
from tests.netns.connections_lab import PORT, PeerEcho, ViaStream, connect_once, connect_steadily
from tests.netns.ha_topology import SHOOT_POD, HaTopology
from tests.netns.traffic import UdpEchoServer, UdpStream

SCENARIOS = ("roll", "stall", "death")
CONNECTS_PER_SECOND = 20  # new TCP connections per second, over all kube-apiservers
STREAM_INTERVAL = 0.05  # datagrams of a UDP stream (20/s)
POD_GONE = 3.0  # a rolled vpn-shoot pod is away this long
EXIT_GRACE = 15.0  # the tunnel-controller exits within DRAIN_SECONDS + this
CONVERGE = 120.0  # every daemon ready again (vpn2's clients back off to 5 s between attempts)
SWITCH_TIMEOUT = 40.0  # a stalled path is left within this (vpn2's rounds: 10 pings of 1 s)
RESUME = 30.0  # after a stall an open stream echoes again (or errors) within this (TCP backoff)
ERROR_TIMEOUT = 60.0  # a dead vpn-shoot's streams error within this, or count as hung
OTHERS_FLOW = 15.0  # the other vpn-shoot's streams echo again within this
STREAMS_PER_SHOOT = 2  # death: streams through each vpn-shoot, at least (from kube-apiserver 0)
MAX_EXTRA_STREAMS = 8  # death: kube-apiserver 0 opens at most this many streams for that


@dataclass(frozen=True)
class Setup:
    """A fleet of benchmarks/server_events.py and what this benchmark adds to it."""

    fleet: Fleet
    drain_seconds: float  # DRAIN_SECONDS of the tunnel-controllers
    pinning: bool  # the kube-apiservers pin connections (and can spread them)

    @property
    def tc_env(self) -> dict[str, str]:
        return {**self.fleet.daemon_env, "DRAIN_SECONDS": f"{self.drain_seconds:g}"}


SETUPS = {
    VPN2: Setup(FLEETS[VPN2], 0, False),  # vpn2 has no drain: SIGTERM = exit at once
    OURS: Setup(FLEETS[OURS], 5, True),  # the default drain is 20 s; 5 s keeps the roll short
}


class Discarded(Exception):
    """The fault did not take effect: the run measured nothing."""


@dataclass
class Run:
    """What one run of a scenario measured."""

    seconds: dict[str, list[float]] = field(default_factory=dict)  # figure → values (per stream, pod or run)
    counts: dict[str, int] = field(default_factory=dict)  # figure → count in this run
    note: str = ""
    duration: float = 0.0  # seconds from converged to restored
    events: dict[str, list] = field(default_factory=dict)  # kept in the result file only, not summarised


# --- the pure parts: one run's figures from what it recorded, runs summarised ---


def busiest(found: dict[str, int | None]) -> int:
    """The vpn-shoot most of ``found``'s values name (the lowest index on a tie)."""
    counts = Counter(v for v in found.values() if v is not None)
    return max(sorted(counts), key=lambda j: counts[j])


def connection_outcomes(results: list[tuple[float, str, object]]) -> tuple[int, int, dict[str, int]]:
    """``connect_steadily``'s results: attempts, failures, failures by error type."""
    errors = Counter(type(r[2]).__name__ for r in results if isinstance(r[2], BaseException))
    return len(results), sum(errors.values()), dict(errors)


def failed_between(results: list[tuple[float, str, object]], start: float, end: float) -> int:
    """``connect_steadily``'s failures among the connections started in [start, end)."""
    return sum(1 for r in results if start <= r[0] < end and isinstance(r[2], BaseException))


def inflight_breaks(errors_at: list[float | None], exited: float) -> tuple[int, int]:
    """Open streams' error times: (broken until the tunnel-controller exited, errored after)."""
    before = sum(1 for t in errors_at if t is not None and t <= exited)
    return before, sum(1 for t in errors_at if t is not None and t > exited)


def stream_fates(errored: list[bool], echoed_again: list[bool]) -> tuple[int, int, int]:
    """Open streams after a stall: (resumed, errored, silent); broken = errored + silent."""
    resumed = sum(1 for e, again in zip(errored, echoed_again) if not e and again)
    failed = sum(errored)
    return resumed, failed, len(errored) - resumed - failed


def aggregate(runs: list[Run], failures: list[dict], discarded: list[dict] | None = None) -> dict:
    """A scenario's runs as its result: each figure summarised over every run, counts summed
    (and their largest in one run)."""
    discarded = discarded or []
    figures = sorted({name for run in runs for name in run.seconds})
    counted = sorted({name for run in runs for name in run.counts})
    return {
        "runs": len(runs) + len(failures) + len(discarded),
        "measured": len(runs),
        "failed": failures,
        "discarded": discarded,
        "seconds": {name: summary([v for run in runs for v in run.seconds.get(name, [])]) for name in figures},
        "counts": {name: sum(run.counts.get(name, 0) for run in runs) for name in counted},
        "count_max": {name: max(run.counts.get(name, 0) for run in runs) for name in counted},
        "duration": summary([run.duration for run in runs]),
        "per_run": [asdict(run) for run in runs],
    }


def figures(result: dict) -> dict[str, float | None]:
    """Our fleet's figures that benchmarks/targets.py has targets for (None: not run;
    NaN, a miss, when a run failed or nothing was there to measure)."""
    ours = (result["fleets"].get(OURS) or {}).get("scenarios", {})
    nan = float("nan")

    def count(scenario: str, key: str, total: str) -> float | None:
        got = ours.get(scenario)
        if got is None:
            return None
        if got["failed"] or not got["measured"] or not got["counts"].get(total):
            return nan
        return float(got["counts"].get(key, 0))

    def ms(scenario: str, figure: str, statistic: str) -> float | None:
        got = ours.get(scenario)
        if got is None:
            return None
        if got["failed"] or not got["seconds"].get(figure, {}).get("n"):
            return nan
        return 1000 * got["seconds"][figure][statistic]

    return {
        "roll_failed_connections": count("roll", "failed_connections", "connections"),
        "roll_gap_p99": ms("roll", "datagram_gap", "p99"),
        "stall_broken": count("stall", "broken", "streams"),
        "death_other_broken": count("death", "other_broken", "other_streams"),
    }


def table_rows(result: dict) -> list[tuple[str, str, str, str]]:
    """(figure, vpn2 profile, ours, target) for every scenario that ran."""
    def t(key: str) -> str:
        return targets.target("connections", key).text

    def of(key: str, total: str) -> Callable[[dict], str]:
        return lambda g: f"{g['counts'].get(key, 0)}/{g['counts'].get(total, 0)}"

    def ms(figure: str, statistic: str = "p99") -> Callable[[dict], str]:
        def render(got: dict) -> str:
            values = got["seconds"].get(figure)
            if statistic == "p99" or not values or not values["n"]:
                return p50_p99_ms(values)
            return f"{1000 * values['p50']:.0f} / {1000 * values[statistic]:.0f} ms"
        return render

    def failed_connections(got: dict) -> str:
        counts = got["counts"]
        return (f"{counts.get('failed_connections', 0)}/{counts.get('connections', 0)}, "
                f"max {got['count_max'].get('failed_connections', 0)}/run")

    def tallied(got: dict) -> str:
        counts = got["counts"]
        return f"{counts.get('switches_leaving', 0)} / {counts.get('switches_down', 0)}"

    common = [
        ("  primary switches of the kube-apiservers: leaving / primary down", tallied, "(measured)"),
        ("  server-steering moves of the kube-apiservers", lambda g: str(g["counts"].get("steering_moves", 0)),
         "(measured)"),
        ("  one run (converged → restored), mean / max",
         lambda g: f"{g['duration']['mean']:.1f} / {g['duration']['max']:.1f} s" if g["duration"]["n"] else "",
         "(measured)"),
        ("  failed runs (a wait ran out)", lambda g: str(len(g["failed"])), "(none expected)"),
    ]
    layout = {
        "roll": [
            ("planned roll: new TCP connections failed, all runs", failed_connections,
             f"{t('roll_failed_connections')}"),
            ("  of them until the pod came back / after", lambda g: " / ".join(
                str(g["counts"].get(k, 0)) for k in ("failed_until_back", "failed_after_back")), "(measured)"),
            ("  longest datagram gap of a stream, SIGTERM → ready, p50 / p99", ms("datagram_gap"),
             f"{t('roll_gap_p99')} p99"),
            ("  the same until the pod came back, p50 / p99", ms("gap_until_back"), "(measured)"),
            ("  the same after it came back, p50 / p99", ms("gap_after_back"), "(measured)"),
            ("  open streams broken before the tunnel-controller exited", of("inflight_broken_before_exit", "inflight"),
             "(measured)"),
            ("  open streams errored after the exit (the pod gone)", of("inflight_errored_after_exit", "inflight"),
             "(info)"),
            ("  SIGTERM → tunnel-controller exited, p50 / max", ms("exit", "max"), "(DRAIN_SECONDS)"),
            ("  kube-apiservers off the victim when it exited", of("off_victim_at_exit", "apiservers"), "(measured)"),
            ("  pod back → every daemon ready, p50 / max", ms("back_to_ready", "max"), "(measured)"),
        ],
        "stall": [
            ("forced switch (path stalled): open TCP streams broken", of("broken", "streams"), f"{t('stall_broken')}"),
            ("  streams resumed / errored / silent", lambda g: " / ".join(
                str(g["counts"].get(k, 0)) for k in ("resumed", "errored", "silent")), "(measured)"),
            ("  putting the loss in place (netlink), p50 / max", ms("loss_setup", "max"), "(harness)"),
            ("  loss being put in place → kube-apiserver switched, p50 / p99", ms("switch"), "(measured)"),
            ("  loss lifted after the last switch was seen, p50 / max", ms("lifted_after_switch", "max"),
             "(harness)"),
            ("  new connection after the switch took the other vpn-shoot", of("new_on_survivor", "streams"),
             "(proof)"),
            ("  conntrack entries closed (PIN_CLOSE_AFTER ran out)", lambda g: str(g["counts"].get("closed", 0)),
             "(info)"),
            ("  runs discarded (no kube-apiserver switched)", lambda g: str(len(g["discarded"])), "(reported)"),
        ],
        "death": [
            ("vpn-shoot death: streams through the other vpn-shoot broken", of("other_broken", "other_streams"),
             f"{t('death_other_broken')}"),
            ("  kill → error of the dead vpn-shoot's streams, p50 / p99", ms("error_after_kill"),
             "(info: no SOCK_DESTROY)"),
            (f"  dead vpn-shoot's streams without an error in {ERROR_TIMEOUT:.0f} s", of("hung", "doomed"),
             "(measured)"),
        ],
    }
    fleets = result["fleets"]
    rows = []
    for scenario in result["scenarios"]:
        for name, render, target in layout[scenario] + common:
            cells = []
            for fleet in (VPN2, OURS):
                got = (fleets.get(fleet) or {}).get("scenarios", {}).get(scenario)
                cells.append(render(got) if got else "")
            rows.append((name, *cells, target))
    return rows


def print_table(result: dict) -> None:
    print_comparison(table_rows(result))
    for fleet, got in result["fleets"].items():
        for scenario, values in got["scenarios"].items():
            for failure in values["failed"]:
                print(f"{fleet}, {scenario}, run {failure['run']} failed: {failure['error']}")
            for discard in values["discarded"]:
                print(f"{fleet}, {scenario}, run {discard['run']} discarded: {discard['why']}")


def result_name(scenarios: list[str], fleets: list[str]) -> str:
    """results/<name>.json: a partial run does not overwrite the full one."""
    parts = [*(scenarios if set(scenarios) != set(SCENARIOS) else []),
             *(fleets if set(fleets) != set(SETUPS) else [])]
    return "-".join(["connections", *parts])


def describe(run: Run) -> str:
    """One log line per run."""
    seconds = "; ".join(f"{name} {', '.join(f'{1000 * v:.0f}' for v in values)} ms"
                        for name, values in run.seconds.items())
    counts = ", ".join(f"{name} {value}" for name, value in run.counts.items())
    return f"{seconds}; {counts}; {run.duration:.1f} s" + (f"; {run.note}" if run.note else "")


# --- the scenarios: each returns one Run, and leaves every pod up and every fault lifted ---


class Bench:
    """One fleet under test."""

    def __init__(self, topo: HaTopology, setup: Setup, args, log_dir: Path):
        self.topo, self.setup, self.args, self.log_dir = topo, setup, args, log_dir

    async def settle(self) -> None:
        await self.topo.wait_bonds_on(0, timeout=CONVERGE)
        await self.topo.wait_converged(timeout=CONVERGE)

    async def primaries(self) -> dict[str, int | None]:
        found = await asyncio.gather(*(self.topo.primary_of(api) for api in self.topo.apiservers))
        return {api.name: primary for api, primary in zip(self.topo.apiservers, found)}

    async def metric_sum(self, name: str, apis=None, **labels) -> float:
        apis = self.topo.apiservers if apis is None else apis
        return sum(await asyncio.gather(*(self.topo.metric(api, name, **labels) for api in apis)))

    async def tally(self) -> Counter:
        """Primary switches (leaving, primary down) and server-steering moves so far, summed
        over the kube-apiservers (whose daemons a run does not restart)."""
        totals: Counter = Counter()
        for api in self.topo.apiservers:
            status, body = await self.topo.http(api, "/metrics")
            assert status == 200, f"{api.name}: /metrics answered {status}"
            totals["switches_leaving"] += nsutil.metric_value(body, "path_controller_switches_total", reason="leaving")
            totals["switches_down"] += nsutil.metric_value(body, "path_controller_switches_total",
                                                           reason="primary down")
            if self.setup.fleet.steering:
                totals["steering_moves"] += sum(
                    nsutil.metric_value(body, "path_controller_server_moves_total", reason=reason)
                    for reason in MOVE_REASONS)
        return totals

    async def start_shoot(self, shoot) -> None:
        """The vpn-shoot pod's processes started (a fork of this process takes a while in UML: off the loop)."""
        await asyncio.to_thread(self.topo.start_shoot_clients, shoot)
        await asyncio.to_thread(self.topo.start_tunnel_controller, shoot)

    async def restore_shoot(self, shoot) -> None:
        """The vpn-shoot pod (again): whatever is left of it killed, its clients and
        tunnel-controller started, every daemon ready."""
        await asyncio.to_thread(self.topo.kill_shoot, shoot)
        await self.start_shoot(shoot)
        await self.topo.wait_converged(timeout=CONVERGE)

    async def dump(self, label: str) -> None:
        """Where every bond is, what /readyz says, every /metrics: to explain a failed run."""
        await server_events.Bench(self.topo, self.setup.fleet, self.args, self.log_dir).dump(label)


def close_all(things) -> None:
    for thing in things:
        thing.close()


async def new_connection(api) -> int | str:
    """The vpn-shoot a new connection from ``api`` went through, or why it failed."""
    try:
        return await connect_once(api.ns)
    except (OSError, ConnectionError, asyncio.TimeoutError, asyncio.IncompleteReadError) as error:
        return type(error).__name__


async def wait_quietly(condition, timeout: float, message: str, interval: float = 0.1) -> bool:
    """``nsutil.wait_for`` that answers False instead of failing: the caller counts what is missing."""
    try:
        await nsutil.wait_for(condition, timeout=timeout, interval=interval, message=message)
    except AssertionError:
        return False
    return True


async def planned_roll(bench: Bench, run: int) -> Run:
    topo = bench.topo
    before = await bench.primaries()
    victim = busiest(before)
    shoot = topo.shoots[victim]
    opened: list = []
    results: list = []
    connector = None
    try:
        inflight = {}
        for api in topo.apiservers:
            if before[api.name] == victim:
                inflight[api.name] = await ViaStream(api.ns).start()
                opened.append(inflight[api.name])
                assert inflight[api.name].via == victim, f"{api.name}: a new stream went past its primary"
        udps = {}
        for api in topo.apiservers:
            udps[api.name] = await UdpStream(api.ns, str(SHOOT_POD), interval=STREAM_INTERVAL).start()
            opened.append(udps[api.name])
        for stream in udps.values():
            await stream.wait_flowing()
        connector = asyncio.create_task(connect_steadily(topo, CONNECTS_PER_SECOND, results))
        await nsutil.wait_for(lambda: len(results) >= CONNECTS_PER_SECOND, timeout=10,
                              message="new connections flowing")
        process = shoot.processes["tunnel-controller"]
        t_term = time.monotonic()
        process.popen.send_signal(signal.SIGTERM)
        try:
            await nsutil.wait_for(lambda: process.popen.poll() is not None,
                                  timeout=bench.setup.drain_seconds + EXIT_GRACE, interval=0.05,
                                  message=f"vpn-shoot-{victim}'s tunnel-controller exits")
            exited = time.monotonic()
            after = await bench.primaries()
            await asyncio.to_thread(topo.kill_shoot, shoot)  # the pod is gone: its OpenVPN clients with it
            gone = time.monotonic()
            await asyncio.sleep(POD_GONE)  # the measured window the pod is away
            restarting = time.monotonic()
        finally:
            try:
                await bench.restore_shoot(shoot)
            finally:
                back = time.monotonic()
                connector.cancel()
                await asyncio.gather(connector, return_exceptions=True)
        attempts, failed, errors = connection_outcomes(results)
        broken_before, errored_after = inflight_breaks([s.error_at for s in inflight.values()], exited)
        window = back - t_term
        in_window = sum(1 for r in results if r[0] >= t_term)
        note = f"victim vpn-shoot-{victim}, exit code {process.popen.returncode}, pod gone {restarting - gone:.1f} s"
        if errors:
            note += f", failed: {errors}"
        if in_window < 0.5 * CONNECTS_PER_SECOND * window:
            note += f", connections came slower than asked ({in_window} in {window:.1f} s)"
        return Run(
            seconds={"datagram_gap": [s.longest_outage(t_term, back) for s in udps.values()],
                     "gap_until_back": [s.longest_outage(t_term, restarting) for s in udps.values()],
                     "gap_after_back": [s.longest_outage(restarting, back) for s in udps.values()],
                     "exit": [exited - t_term], "back_to_ready": [back - restarting]},
            counts={"connections": attempts, "failed_connections": failed,
                    "failed_until_back": failed_between(results, float("-inf"), restarting),
                    "failed_after_back": failed_between(results, restarting, float("inf")),
                    "inflight": len(inflight),
                    "inflight_broken_before_exit": broken_before, "inflight_errored_after_exit": errored_after,
                    "apiservers": len(after), "off_victim_at_exit": sum(p != victim for p in after.values())},
            note=note,
            events={"failed_connections": [(round(r[0] - t_term, 3), r[1], type(r[2]).__name__)
                                           for r in results if isinstance(r[2], BaseException)],
                    "exited": [exited - t_term], "gone": [gone - t_term], "restarting": [restarting - t_term],
                    "ready": [back - t_term]},
        )
    finally:
        if connector is not None and not connector.done():
            connector.cancel()
            await asyncio.gather(connector, return_exceptions=True)
        close_all(opened)


TC_H_ROOT, TC_H_INGRESS, INGRESS_HANDLE = 0xFFFFFFFF, 0xFFFFFFF1, 0xFFFF0000


async def _path_qdiscs(topo: HaTopology, shoot) -> list[tuple[str, int, dict]]:
    """(device, ifindex, root qdisc) of each tap and ifb ``path_netem`` put netem on."""
    ipr = await topo.ipr(shoot.ns)
    found = []
    for i in range(len(topo.servers)):
        for dev in (f"tap{i}", f"ifb{i}"):
            index = (await link_by_name(ipr, dev))["index"]
            (root,) = [q async for q in await ipr.get_qdiscs(index=index)
                       if q["index"] == index and q["parent"] == TC_H_ROOT]
            assert root.get("TCA_KIND") == "netem", f"{shoot.name}/{dev}: root qdisc {root.get('TCA_KIND')}, not netem"
            found.append((dev, index, root))
    return found


def _counters(qdiscs: list[tuple[str, int, dict]]) -> tuple[int, int]:
    """(passed, dropped) of the path's netem qdiscs, both directions."""
    passed = dropped = 0
    for _, _, root in qdiscs:
        stats = root.get("TCA_STATS2")
        passed += stats.get("TCA_STATS_BASIC")["packets"]
        dropped += stats.get("TCA_STATS_QUEUE")["drops"]
    return passed, dropped


async def silence_path(topo: HaTopology, shoot) -> tuple[int, int]:
    """Turns the loss of ``path_netem``'s qdiscs, put in place beforehand with 0 %, to 100 % over
    netlink: the stall starts within milliseconds (``tc`` processes take seconds in UML, and the
    path would fail tap by tap). Returns the counters at that moment: ``lift_path_loss`` subtracts them."""
    ipr = await topo.ipr(shoot.ns)
    qdiscs = await _path_qdiscs(topo, shoot)
    for _, index, root in qdiscs:
        await ipr.tc("change", kind="netem", index=index, handle=root["handle"], loss=100)
    return _counters(await _path_qdiscs(topo, shoot))


async def lift_path_loss(topo: HaTopology, shoot) -> tuple[int, int]:
    """Lifts ``path_netem``'s loss on the vpn-shoot's VPN path over netlink, in milliseconds
    (``path_netem(shoot, None)`` runs ``tc`` processes, which take seconds in UML: long
    enough for ``PIN_CLOSE_AFTER`` to close what the stall was to leave alone). First its
    qdiscs' counters, the proof that the loss was there: (passed, dropped), both
    directions; then each tap's root qdisc and ingress (the redirect to its ifb) are
    deleted. ``path_netem(shoot, None)`` removes the rest afterwards."""
    ipr = await topo.ipr(shoot.ns)
    qdiscs = await _path_qdiscs(topo, shoot)
    passed, dropped = _counters(qdiscs)
    taps = [index for dev, index, _ in qdiscs if dev.startswith("tap")]
    for index in taps:
        await ipr.tc("del", index=index, handle=0, parent=TC_H_ROOT)
        await ipr.tc("del", index=index, handle=INGRESS_HANDLE, parent=TC_H_INGRESS)
    return passed, dropped


async def forced_switch(bench: Bench, run: int) -> Run:
    topo = bench.topo
    before = await bench.primaries()
    victim = busiest(before)
    survivor = 1 - victim
    shoot = topo.shoots[victim]
    moving = [api for api in topo.apiservers if before[api.name] == victim]
    opened: list = []
    try:
        streams = {}
        for api in moving:
            streams[api.name] = await ViaStream(api.ns).start()
            opened.append(streams[api.name])
            assert streams[api.name].via == victim, f"{api.name}: a new stream went past its primary"
        closed_before = await bench.metric_sum("path_controller_connections_closed_total", moving, target=str(victim))
        switched_at: dict[str, float] = {}

        async def all_switched() -> bool:
            found = await asyncio.gather(*(topo.primary_of(api) for api in moving))
            for api, primary in zip(moving, found):
                if primary == survivor:
                    switched_at.setdefault(api.name, time.monotonic())
            return len(switched_at) == len(moving)

        await asyncio.to_thread(topo.path_netem, shoot, "loss 0%")  # in place, passing everything
        baseline = (0, 0)
        try:
            t0 = time.monotonic()
            baseline = await silence_path(topo, shoot)
            in_place = time.monotonic()
            await wait_quietly(all_switched, SWITCH_TIMEOUT, f"every kube-apiserver off vpn-shoot-{victim}",
                               interval=0.05)  # judged below: some switched, or none (the run is discarded)
        finally:
            try:
                passed, dropped = await lift_path_loss(topo, shoot)
                lifted = time.monotonic()
                passed, dropped = passed - baseline[0], dropped - baseline[1]
            finally:
                await asyncio.to_thread(topo.path_netem, shoot, None)
        if not switched_at:
            raise Discarded(f"no kube-apiserver left vpn-shoot-{victim} within {SWITCH_TIMEOUT:.0f} s "
                            f"(the loss dropped {dropped}, passed {passed})")
        assert dropped > 0 and passed == 0, f"the path's loss passed {passed} packets and dropped {dropped}"
        switched = [api for api in moving if api.name in switched_at]
        mine = [streams[api.name] for api in switched]
        await wait_quietly(lambda: all(s.echoes_since(lifted) >= 3 or s.error for s in mine), RESUME,
                           "the open streams echo again or error")  # judged below
        resumed, errored, silent = stream_fates([s.error is not None for s in mine],
                                                [s.echoes_since(lifted) >= 3 for s in mine])
        vias = [await new_connection(api) for api in switched]
        closed = await bench.metric_sum("path_controller_connections_closed_total", moving, target=str(victim))
        note = f"vpn-shoot-{victim} silenced {lifted - t0:.2f} s, loss dropped {dropped}"
        if len(switched) < len(moving):
            note += f", not switched within {SWITCH_TIMEOUT:.0f} s: {[a.name for a in moving if a not in switched]}"
        if errored:
            note += f", errors: {sorted({type(s.error).__name__ for s in mine if s.error})}"
        if failed_new := [v for v in vias if isinstance(v, str)]:
            note += f", new connections failed: {failed_new}"
        return Run(
            seconds={"switch": [switched_at[api.name] - t0 for api in switched], "loss_setup": [in_place - t0],
                     "lifted_after_switch": [lifted - max(switched_at.values())]},
            counts={"streams": len(mine), "broken": errored + silent, "resumed": resumed, "errored": errored,
                    "silent": silent, "new_on_survivor": vias.count(survivor), "closed": int(closed - closed_before)},
            note=note,
        )
    finally:
        close_all(opened)


async def vpn_shoot_death(bench: Bench, run: int) -> Run:
    topo = bench.topo
    opened: list = []
    try:
        streams: list[ViaStream] = []
        owner: dict[int, str] = {}

        async def open_from(api) -> None:
            streams.append(await ViaStream(api.ns).start())
            opened.append(streams[-1])
            owner[id(streams[-1])] = api.name

        for api in topo.apiservers:
            await open_from(api)
        extra = 0
        while extra < MAX_EXTRA_STREAMS and min(sum(s.via == j for s in streams) for j in range(len(topo.shoots))) \
                < STREAMS_PER_SHOOT:
            await open_from(topo.apiservers[0])
            extra += 1
        victim = busiest({str(i): s.via for i, s in enumerate(streams)})
        shoot = topo.shoots[victim]
        doomed = [s for s in streams if s.via == victim]
        others = [s for s in streams if s.via != victim]
        t0 = time.monotonic()
        await asyncio.to_thread(topo.kill_shoot, shoot)
        try:
            await wait_quietly(lambda: all(s.error for s in doomed), ERROR_TIMEOUT,
                               f"every stream through dead vpn-shoot-{victim} errors")
            seen = time.monotonic()
            errored_at = [s.error_at - t0 for s in doomed if s.error_at is not None]  # within ERROR_TIMEOUT
            await wait_quietly(lambda: all(s.echoes_since(seen) >= 3 or s.error for s in others), OTHERS_FLOW,
                               "the other vpn-shoot's streams echo")
            other_broken = sum(1 for s in others if s.error or s.echoes_since(seen) < 3)
            errors = sorted({type(s.error).__name__ for s in doomed if s.error})
        finally:
            await asyncio.to_thread(topo.kill_shoot, shoot)
            await bench.start_shoot(shoot)
            await topo.wait_bonds_on(0, timeout=CONVERGE)
            await topo.wait_converged(timeout=CONVERGE)
        return Run(
            seconds={"error_after_kill": errored_at},
            counts={"doomed": len(doomed), "hung": len(doomed) - len(errored_at),
                    "other_streams": len(others), "other_broken": other_broken},
            note=f"victim vpn-shoot-{victim}, {len(streams)} streams ({extra} more from "
                 f"{topo.apiservers[0].name}), errors {errors}",
            events={"streams": [(owner[id(s)], s.via, None if s.error_at is None else round(s.error_at - t0, 3),
                                 type(s.error).__name__ if s.error else None) for s in streams]},
        )
    finally:
        close_all(opened)


async def spread_first(bench: Bench, mode: str | None) -> None:
    """Kube-apiserver 0's path-controller restarted with ``PATH_MODE=mode`` (None: its
    default); with ``spread``, shown to send new connections to both vpn-shoots."""
    topo, api = bench.topo, bench.topo.apiservers[0]
    await asyncio.to_thread(topo.stop, api, "path-controller")
    topo.start_path_controller(api, module=bench.setup.fleet.path_controller,
                               **({"PATH_MODE": mode} if mode else {}))
    await topo.wait_converged(timeout=CONVERGE)
    if mode == "spread":
        async def both() -> bool:
            return all([await topo.metric(api, "path_controller_new_connections_target", target=str(j)) == 1
                        for j in range(len(topo.shoots))])

        await nsutil.wait_for(both, timeout=10, message=f"{api.name} spreads new connections")


STEPS: dict[str, Callable[[Bench, int], Awaitable[Run]]] = {
    "roll": planned_roll, "stall": forced_switch, "death": vpn_shoot_death,
}


async def run_scenario(bench: Bench, scenario: str, runs: int) -> tuple[dict, bool]:
    """The scenario's result, and whether the fleet is still fit for the next one.
    A run that fails (a wait ran out) is recorded with its error and the state dumped."""
    done, failures, discarded = [], [], []
    spread = scenario == "death" and bench.setup.pinning
    if spread:
        await spread_first(bench, "spread")
    try:
        for run in range(runs):
            label = f"{scenario}-run{run + 1}"
            try:
                await bench.settle()
            except AssertionError as error:
                log(f"  {label}: the fleet did not settle: {error}")
                await bench.dump(label + "-settle")
                failures.append({"run": run + 1, "error": f"did not settle: {error}"})
                return aggregate(done, failures, discarded), False
            started = time.monotonic()
            try:
                before = await bench.tally()
                result = await STEPS[scenario](bench, run)
                result.counts.update({key: int(value) for key, value in ((await bench.tally()) - before).items()})
            except Discarded as why:
                log(f"  {label} discarded: {why}")
                discarded.append({"run": run + 1, "why": str(why)})
                continue
            except (AssertionError, OSError, ConnectionError) as error:
                log(f"  {label} FAILED: {error!r}")
                await bench.dump(label)
                failures.append({"run": run + 1, "error": repr(error)})
                continue
            result.duration = time.monotonic() - started
            done.append(result)
            log(f"  {label}: {describe(result)}")
    finally:
        if spread:
            await spread_first(bench, None)
    return aggregate(done, failures, discarded), True


async def run_fleet(setup: Setup, args) -> dict:
    fleet = setup.fleet
    log_dir = RESULTS / "connections-bench-logs" / fleet.name
    shutil.rmtree(log_dir, ignore_errors=True)  # the processes' logs are numbered: an old run's would mix in
    workdir = Path(f"/tmp/connections-bench-{fleet.name}")
    workdir.mkdir(parents=True, exist_ok=True)
    async with Namespaces(log_dir) as spaces:
        topo = await HaTopology.build(
            spaces.make_netns, spaces.ipr_factory, spaces.processes, workdir,
            apiservers=3, shoots=2, pc_env=fleet.daemon_env, tc_env=setup.tc_env, bond_env=fleet.bond_env,
            start_daemons=False,
        )
        for shoot in topo.shoots:
            topo.start_tunnel_controller(shoot)
        for api in topo.apiservers:
            topo.start_path_controller(api, module=fleet.path_controller)
        echo = await PeerEcho(topo.shoot_net, PORT).start()
        udp_echo = await UdpEchoServer(topo.shoot_net, (SHOOT_POD,)).start()
        scenarios, started = {}, time.monotonic()
        try:
            bench = Bench(topo, setup, args, log_dir)
            await bench.settle()
            pinning = {api.name: await topo.metric(api, "path_controller_connection_pinning") for api in topo.apiservers}
            if setup.pinning:
                assert all(v == 1 for v in pinning.values()), (
                    f"connection pinning is off in {pinning} (each path-controller's log says what the kernel lacks)")
            log(f"{fleet.name}: converged, primaries {await bench.primaries()}, pinning {pinning}")
            for scenario in args.scenarios:
                log(f"{fleet.name}: {scenario}")
                scenario_started = time.monotonic()
                scenarios[scenario], fit = await run_scenario(bench, scenario, args.runs)
                scenarios[scenario]["minutes"] = (time.monotonic() - scenario_started) / 60
                if not fit:
                    log(f"{fleet.name}: stopped after {scenario}: the fleet did not settle")
                    break
        finally:
            udp_echo.close()
            for writer in list(echo.writers):
                writer.transport.abort()  # connections through a killed vpn-shoot would wait forever
            await echo.aclose()
            # Let the handlers see their connections end (else asyncio.run cancels them, noisily).
            await wait_quietly(lambda: not echo.writers, 5, "the echo server's handlers end")
    return {
        "settings": {"bond": fleet.bond_env, "path_controller_env": fleet.daemon_env,
                     "tunnel_controller_env": setup.tc_env, "path_controller": fleet.path_controller},
        "pinning": pinning,
        "minutes": (time.monotonic() - started) / 60,
        "load_average_at_end": os.getloadavg(),
        "scenarios": scenarios,
    }


async def run(args) -> dict:
    fleets = {}
    for name in args.fleets:
        log(f"building the {name} fleet")
        fleets[name] = await run_fleet(SETUPS[name], args)
    return {
        "benchmark": "connections",
        "environment": environment(),
        "topology": "2 OpenVPN servers (keepalive 10 30), 3 kube-apiservers, 2 vpn-shoots (connect-retry 1 5), "
                    "one fleet after the other, inside UML",
        "runs": args.runs,
        "connects_per_second": CONNECTS_PER_SECOND,
        "stream_interval": STREAM_INTERVAL,
        "pod_gone_seconds": POD_GONE,
        "drain_seconds": {name: SETUPS[name].drain_seconds for name in args.fleets},
        "scenarios": args.scenarios,
        "fleets": fleets,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="runs of each scenario per fleet (default 5)")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS),
                        help=f"comma-separated subset of {','.join(SCENARIOS)} (default: all)")
    parser.add_argument("--fleets", default=",".join(SETUPS), help=f"comma-separated subset of {','.join(SETUPS)}")
    targets.add_check_option(parser)
    args = parser.parse_args()
    args.scenarios, args.fleets = args.scenarios.split(","), args.fleets.split(",")
    if unknown := set(args.scenarios) - set(SCENARIOS):
        parser.error(f"--scenarios: unknown {', '.join(sorted(unknown))}")
    if unknown := set(args.fleets) - set(SETUPS):
        parser.error(f"--fleets: unknown {', '.join(sorted(unknown))}")
    if args.runs < 1:
        parser.error("--runs must be ≥ 1")
    result = asyncio.run(run(args))
    verdicts = targets.evaluate("connections", figures(result))
    result["targets"] = targets.as_json(verdicts)
    print_table(result)
    write_result(result_name(args.scenarios, args.fleets), result)
    return targets.report(verdicts, args.check)


if __name__ == "__main__":
    sys.exit(main())
