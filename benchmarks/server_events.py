"""Server events end to end (issue 14): our fleet beside a vpn2 fleet, on real OpenVPN.

    .venv/bin/python -m kernel_sandbox --timeout 10800 --mem 4G -- .venv/bin/python -m benchmarks.server_events \\
        [--runs 10] [--scenarios roll,blackhole,pod-start,flap] [--signal alternate] [--wan ["delay 30ms 5ms loss 1%"]] \\
        [--fleets vpn2-profile,ours] [--check]

A server event affects the whole fleet, so the two fleets are built one after
the other on the HA topology (2 OpenVPN servers, 3 kube-apiservers, 2 vpn-shoots,
vpn2's client timing), not mixed:

* ``ours``: the defaults (split-tolerant bonds, server steering, our probe policy);
* ``vpn2-profile``: vpn2's bonds (``BOND_SPLIT_TOLERANT=false``), ``SERVER_STEERING=false``
  in both daemons, vpn2's probe timing in the kube-apiservers (benchmarks/vpn2_profile.py).

Every run starts with every bond on server 0 and every daemon ready; every
kube-apiserver sends a UDP stream (20/s) to a shoot pod, one of them also an
open TCP stream. Scenarios:

* ``roll``: server 0's OpenVPN killed (SIGTERM and SIGKILL alternating), back once every
  bond left it: kill gap (first answer to a datagram sent after the kill; it includes the
  measuring process's own scheduling delay on the loaded sandbox), kill outage (longest run
  of lost datagrams by send time, which does not), return gap (longest gap from the restart
  until 2 s after the last bond is home);
* ``blackhole``: server 0's underlay drops everything, carrier stays up: traffic again
  (runs that do not recover are capped at --blackhole-timeout and counted);
* ``pod-start``: server 0 killed, and when it is started again one kube-apiserver
  restarts (bonding setup again, so ``primary tap0`` as in a new pod; its OpenVPN
  clients and daemon): restart → answered, restart → on the vpn-shoots' server;
* ``flap``: one kube-apiserver's own client to server 0 restarts: its separation, and
  client back → answered.

Every scenario counts primary vpn-shoot switches, open TCP streams that broke, and the
longest separation of a pod (its stream without an answer). Prints a table (figure |
vpn2 profile | ours | target, benchmarks/targets.py) and writes results/server_events.json
(a partial run: a suffixed file). ``--check`` exits 1 when a figure of ours misses its target.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

from benchmarks import targets
from benchmarks.common import (
    OURS,
    RESULTS,
    VPN2,
    Namespaces,
    cpu_idle_and_total,
    dump_metrics,
    environment,
    log,
    p50_p99_ms,
    print_comparison,
    summary,
    write_result,
)
from steering.core import MOVE_REASONS
from tests.netns import nsutil
from tests.netns.faults import assert_black_hole
from tests.netns.ha_topology import SHOOT_POD, SHOOT_POD6, SHOOT_TARGETS, ApiServer, HaTopology
from tests.netns.traffic import TcpEchoServer, TcpStream, UdpEchoServer, UdpStream

SCENARIOS = ("roll", "blackhole", "pod-start", "flap")
SIGNALS = {"term": (signal.SIGTERM,), "kill": (signal.SIGKILL,), "alternate": (signal.SIGTERM, signal.SIGKILL)}
DEFAULT_WAN = "delay 30ms 5ms loss 1%"

# 20 datagrams per second per stream: at 100/s three streams saturate the sandbox's vCPU.
STREAM_INTERVAL = 0.05
LEAVE = 10.0  # every bond off a killed server (carrier loss: a miimon tick)
RECONNECT = 60.0  # vpn2's clients back off to 5 s between attempts; TLS on a loaded sandbox
HOME = 180.0  # every bond home again (after a black hole a client may sit in TCP's SYN backoff)
QUIET = 2.0  # watched after the last bond came home: a gap after the last move shows here
PAUSE = 2.0  # converged and quiet before a fault
TCP_BACKOFF = 60.0  # an open TCP stream that echoes again within this is alive


@dataclass(frozen=True)
class Fleet:
    name: str
    path_controller: str  # module the kube-apiservers run
    bond_env: dict[str, str]
    daemon_env: dict[str, str]  # for both daemons
    steering: bool


FLEETS = {
    VPN2: Fleet(VPN2, "benchmarks.vpn2_profile", {"BOND_SPLIT_TOLERANT": "false"}, {"SERVER_STEERING": "false"}, False),
    OURS: Fleet(OURS, "path_controller", {}, {}, True),
}


@dataclass
class Run:
    """What one run of a scenario measured."""

    seconds: dict[str, dict[str, float]]  # figure → kube-apiserver → seconds
    tcp_survived: bool
    timeouts: int = 0  # streams not answered within the cap (their figure is the cap)
    flags: dict[str, bool] = field(default_factory=dict)
    note: str = ""
    switches: float = 0.0  # primary vpn-shoot switches, all kube-apiservers
    moves: dict[str, float] = field(default_factory=dict)  # steering moves by reason, all pods (our fleet)


def aggregate(runs: list[Run], failures: list[dict]) -> dict:
    """A scenario's runs as its result: each figure summarised over every run and pod."""
    figures = sorted({name for run in runs for name in run.seconds})
    moves = {reason: sum(run.moves.get(reason, 0.0) for run in runs) for reason in MOVE_REASONS}
    return {
        "runs": len(runs) + len(failures),
        "failed": failures,
        "seconds": {name: summary([v for run in runs for v in run.seconds.get(name, {}).values()]) for name in figures},
        "timeouts": sum(run.timeouts for run in runs),
        "flags": {name: sum(run.flags[name] for run in runs) for name in sorted({n for r in runs for n in r.flags})},
        "switches": sum(run.switches for run in runs),
        "tcp_survived": sum(run.tcp_survived for run in runs),
        "moves": {reason: count for reason, count in moves.items() if count},
        "per_run": [asdict(run) for run in runs],
    }


class Probe:
    """The traffic of one run: a UDP stream from every kube-apiserver, one TCP stream."""

    def __init__(self, topo: HaTopology, tcp_from: ApiServer):
        self.topo, self.tcp_from = topo, tcp_from
        self.udp: dict[str, UdpStream] = {}
        self.tcp: TcpStream | None = None

    async def start(self) -> Probe:
        for api in self.topo.apiservers:
            self.udp[api.name] = await UdpStream(api.ns, str(SHOOT_POD), interval=STREAM_INTERVAL).start()
        for stream in self.udp.values():
            await stream.wait_flowing(timeout=30)
        self.tcp = await TcpStream(self.tcp_from.ns, str(SHOOT_POD6)).start()
        await nsutil.wait_for(lambda: self.tcp.echoed, timeout=10, message="the TCP stream echoed")
        return self

    def close(self) -> None:
        for stream in self.udp.values():
            stream.close()
        if self.tcp:
            self.tcp.close()

    async def traffic_again(self, t0: float, cap: float, names=None) -> tuple[dict[str, float], int]:
        """Per stream: seconds from ``t0`` to the first answer to a datagram sent after it;
        streams silent for ``cap`` seconds get ``cap``. Also: how many were capped."""
        streams = {name: s for name, s in self.udp.items() if names is None or name in names}
        try:
            await nsutil.wait_for(lambda: all(s.recovery_after(t0) is not None for s in streams.values()),
                                  timeout=max(0.0, t0 + cap - time.monotonic()), interval=0.1, message="traffic")
        except AssertionError:
            pass
        times = {name: s.recovery_after(t0) for name, s in streams.items()}
        return {name: cap if t is None else t for name, t in times.items()}, sum(t is None for t in times.values())

    def gaps(self, start: float, end: float, names=None) -> dict[str, float]:
        """Per stream: the longest run of lost datagrams sent between ``start`` and ``end`` (time
        the sender itself did not run is not counted: a busy benchmark process is no outage)."""
        return {name: s.longest_outage(start, end) for name, s in self.udp.items() if names is None or name in names}

    async def tcp_survived(self, end: float) -> tuple[bool, str]:
        """Whether the TCP stream echoes after ``end`` (after a long outage its own
        retransmission backoff may take a while), and why not."""
        try:
            await nsutil.wait_for(lambda: self.tcp.error or self.tcp.echoed[-1] > end, timeout=TCP_BACKOFF,
                                  interval=0.2, message="an echo")
        except AssertionError:
            return False, f"TCP stream silent for {TCP_BACKOFF:.0f} s after the event"
        if self.tcp.error:
            return False, f"TCP stream broke: {self.tcp.error!r}"
        return True, ""

    def round_trip_ms(self) -> float:
        """Median round trip of every answered datagram."""
        trips = [s.answered[seq] - s.sent[seq] for s in self.udp.values() for seq in s.answered]
        return 1000 * statistics.median(trips) if trips else float("nan")


class Bench:
    """One fleet under test, and the counters a run reads before and after."""

    def __init__(self, topo: HaTopology, fleet: Fleet, args, log_dir: Path):
        self.topo, self.fleet, self.args, self.log_dir = topo, fleet, args, log_dir
        self.before: dict[str, dict[str, float]] = {}
        self.carried: dict[str, dict[str, float]] = {}

    @asynccontextmanager
    async def probe(self, tcp_from: ApiServer):
        probe = Probe(self.topo, tcp_from)
        try:
            yield await probe.start()
        finally:
            probe.close()

    def signal_for(self, run: int) -> int:
        choices = SIGNALS[self.args.signal]
        return choices[run % len(choices)]

    async def settle(self, timeout: float = HOME) -> None:
        """Every bond on server 0, every daemon ready, then quiet for a moment."""
        await self.topo.wait_bonds_on(0, timeout=timeout)
        await self.topo.wait_converged(timeout=timeout)
        await asyncio.sleep(PAUSE)

    async def home_and_quiet(self) -> float:
        """Waits until every bond is back on server 0 and QUIET seconds more (the end of
        a run's measurement, returned), then until every daemon is ready."""
        await self.topo.wait_bonds_on(0, timeout=HOME)
        await asyncio.sleep(QUIET)
        end = time.monotonic()
        await self.topo.wait_converged(timeout=RECONNECT)
        return end

    async def counters(self) -> dict[str, dict[str, float]]:
        """Per pod: primary switches (kube-apiservers) and steering moves by reason (our fleet)."""
        result = {}
        for member in self.topo.members:
            is_api = member in self.topo.apiservers
            daemon = "path_controller" if is_api else "tunnel_controller"
            if not is_api and not self.fleet.steering:
                continue
            status, body = await self.topo.http(member, "/metrics")
            assert status == 200, f"{member.name}: /metrics answered {status}"
            values = {}
            if is_api:
                values["switches"] = nsutil.metric_value(body, "path_controller_switches_total", reason="primary down")
            if self.fleet.steering:
                for reason in MOVE_REASONS:
                    values[reason] = nsutil.metric_value(body, f"{daemon}_server_moves_total", reason=reason)
            result[member.name] = values
        return result

    async def start_counting(self) -> None:
        self.before = await self.counters()
        self.carried = {}

    async def restarting(self, member) -> None:
        """``member``'s daemon is about to restart (its counters start from 0 again):
        keep what it counted so far and count the new daemon from 0."""
        now = (await self.counters())[member.name]
        self.carried[member.name] = {key: now[key] - self.before[member.name][key] for key in now}
        self.before[member.name] = {key: 0.0 for key in now}

    async def counted(self) -> tuple[float, dict[str, float]]:
        """Primary switches and steering moves by reason since ``start_counting``."""
        after = await self.counters()
        total: dict[str, float] = {}
        for name, values in after.items():
            for key, value in values.items():
                carried = self.carried.get(name, {}).get(key, 0.0)
                total[key] = total.get(key, 0.0) + value - self.before[name][key] + carried
        switches = total.pop("switches", 0.0)
        return switches, {reason: count for reason, count in total.items() if count}

    async def dump(self, label: str) -> None:
        """Where every bond is, what /readyz says, every /metrics: to explain a failed run."""
        taps = {m.name: await self.topo.active_tap(m) for m in self.topo.members}
        ready = await self.topo.readiness()
        (self.log_dir / f"{label}-state.txt").write_text(f"active taps: {taps}\nnot ready: {ready}\n")
        await dump_metrics(self.topo.members, self.log_dir, prefix=f"{label}-")
        log(f"    state: active taps {taps}; not ready {ready}")


# --- the scenarios: each returns one Run, and leaves every server up and every fault lifted ---


async def kill_server(topo: HaTopology, sig: int) -> None:
    """Server 0's OpenVPN gets ``sig``; returns once every bond left it (carrier loss shown first)."""
    await asyncio.to_thread(topo.stop, topo.servers[0], "openvpn", sig)
    await topo.wait_carrier(topo.members, "tap0", on=False, timeout=10)  # the fault took effect
    await topo.wait_bonds_on(1, timeout=LEAVE)


async def server_roll(bench: Bench, run: int) -> Run:
    topo, server = bench.topo, bench.topo.servers[0]
    sig = bench.signal_for(run)
    async with bench.probe(topo.apiservers[run % len(topo.apiservers)]) as probe:
        t0 = time.monotonic()
        try:
            await kill_server(topo, sig)
            kill_gaps, timeouts = await probe.traffic_again(t0, LEAVE)
            await asyncio.sleep(bench.args.down_seconds)
        finally:
            t1 = time.monotonic()
            topo.start_server(server)
        await topo.wait_carrier(topo.members, "tap0", on=True, timeout=RECONNECT)
        end = await bench.home_and_quiet()
        survived, why = await probe.tcp_survived(end)
        return Run({"kill_gap": kill_gaps, "kill_outage": probe.gaps(t0, t1), "return_gap": probe.gaps(t1, end),
                    "separation": probe.gaps(t0, end)},
                   survived, timeouts, note=" ".join([signal.Signals(sig).name, why]).strip())


async def black_hole(bench: Bench, run: int) -> Run:
    topo, server = bench.topo, bench.topo.servers[0]
    async with bench.probe(topo.apiservers[run % len(topo.apiservers)]) as probe:
        t0 = time.monotonic()
        await asyncio.to_thread(topo.blackhole, server)
        in_place = time.monotonic()  # what was sent before may have gone through
        try:
            again, timeouts = await probe.traffic_again(in_place, bench.args.blackhole_timeout)
            assert_black_hole(topo.underlay_counters(server), f"{server.name}'s underlay link")
            carrier = all([await topo.carrier(m, "tap0") for m in topo.members])
            await asyncio.sleep(QUIET)
        finally:
            await asyncio.to_thread(topo.blackhole, server, False)
        end = await bench.home_and_quiet()
        survived, why = await probe.tcp_survived(end)
        return Run({"traffic_again": again, "separation": probe.gaps(t0, end)}, survived, timeouts,
                   flags={"tap0 carrier up when traffic was back": carrier}, note=why)


async def with_the_vpn_shoots(topo: HaTopology, api: ApiServer, t0: float, cap: float) -> tuple[float, str | None]:
    """Seconds from ``t0`` until ``api``'s bond uses the server every vpn-shoot's bond uses
    (``cap`` if never), and the tap it used first."""
    first = None
    while (elapsed := time.monotonic() - t0) < cap:
        tap = await topo.active_tap(api)
        first = first or tap
        if tap is not None and all([await topo.active_tap(shoot) == tap for shoot in topo.shoots]):
            return elapsed, first
        await asyncio.sleep(0.1)
    return cap, first


async def pod_start(bench: Bench, run: int) -> Run:
    topo, server = bench.topo, bench.topo.servers[0]
    victim = topo.apiservers[run % len(topo.apiservers)]
    others = [api.name for api in topo.apiservers if api is not victim]
    async with bench.probe(topo.apiservers[(run + 1) % len(topo.apiservers)]) as probe:
        t0 = time.monotonic()
        try:
            await kill_server(topo, bench.signal_for(run))
        finally:
            topo.start_server(server)
        await bench.restarting(victim)
        await asyncio.to_thread(restart_processes, topo, victim)
        restarted = time.monotonic()
        topo.start_client(victim, 0)
        topo.start_client(victim, 1)
        topo.start_path_controller(victim, module=bench.fleet.path_controller)
        with_fleet, first_tap = await with_the_vpn_shoots(topo, victim, restarted, RECONNECT)
        answered, timeouts = await probe.traffic_again(restarted, RECONNECT, names=[victim.name])
        await topo.wait_carrier(topo.members, "tap0", on=True, timeout=RECONNECT)
        end = await bench.home_and_quiet()
        survived, why = await probe.tcp_survived(end)
        return Run({"restart_answered": answered, "restart_with_fleet": {victim.name: with_fleet},
                    "separation": probe.gaps(t0, end, names=others)},
                   survived, timeouts, note=f"{victim.name} first on {first_tap} {why}".strip())


def restart_processes(topo: HaTopology, api: ApiServer) -> None:
    """The pod's daemon and OpenVPN clients die; its init step runs again."""
    for role in ("path-controller", "openvpn0", "openvpn1"):
        topo.kill(api, role)
    topo.rerun_bonding_setup(api)


async def lone_flap(bench: Bench, run: int) -> Run:
    topo = bench.topo
    victim = topo.apiservers[run % len(topo.apiservers)]
    async with bench.probe(victim) as probe:
        t0 = time.monotonic()
        await asyncio.to_thread(topo.kill, victim, "openvpn0")
        await topo.wait_carrier([victim], "tap0", on=False, timeout=10)
        topo.start_client(victim, 0)
        await topo.wait_carrier([victim], "tap0", on=True, timeout=RECONNECT)
        back = time.monotonic()
        answered, timeouts = await probe.traffic_again(back, RECONNECT, names=[victim.name])
        end = await bench.home_and_quiet()
        survived, why = await probe.tcp_survived(end)
        return Run({"separation": probe.gaps(t0, end), "reconnect_answered": answered}, survived,
                   timeouts, note=f"{victim.name}'s client down {back - t0:.1f} s {why}".strip())


STEPS: dict[str, Callable[[Bench, int], Awaitable[Run]]] = {
    "roll": server_roll, "blackhole": black_hole, "pod-start": pod_start, "flap": lone_flap,
}


def describe(run: Run) -> str:
    """One log line per run."""
    figures = "; ".join(f"{name} {', '.join(f'{1000 * v:.0f}' for v in values.values())} ms"
                        for name, values in run.seconds.items())
    moves = ", ".join(f"{reason} {count:.0f}" for reason, count in run.moves.items())
    return (f"{figures}; TCP {'survived' if run.tcp_survived else 'BROKE'}; switches {run.switches:.0f}"
            + (f"; capped {run.timeouts}" if run.timeouts else "") + (f"; moves: {moves}" if moves else "")
            + (f"; {run.flags}" if run.flags else "") + (f"; {run.note}" if run.note else ""))


async def run_scenario(bench: Bench, scenario: str, runs: int) -> tuple[dict, bool]:
    """The scenario's result, and whether the fleet is still fit for the next one.
    A run that fails (a wait ran out) is recorded with its error and the state dumped."""
    done, failures = [], []
    for run in range(runs):
        label = f"{scenario}-run{run + 1}"
        try:
            await bench.settle()
        except AssertionError as error:
            log(f"  {label}: the fleet did not settle: {error}")
            await bench.dump(label + "-settle")
            failures.append({"run": run + 1, "error": f"did not settle: {error}"})
            return aggregate(done, failures), False
        try:
            await bench.start_counting()
            result = await STEPS[scenario](bench, run)
            result.switches, result.moves = await bench.counted()
        except (AssertionError, OSError) as error:
            log(f"  {label} FAILED: {error}")
            await bench.dump(label)
            failures.append({"run": run + 1, "error": str(error)})
            continue
        done.append(result)
        log(f"  {label}: {describe(result)}")
    return aggregate(done, failures), True


def wan_counters(topo: HaTopology, spec: str) -> dict:
    """What the vpn-shoots' WAN netem passed and dropped: proof that it was there."""
    counters = [topo.underlay_counters(shoot) for shoot in topo.shoots]
    passed, dropped = sum(c.sent for c in counters), sum(c.dropped for c in counters)
    assert passed > 0, f"the WAN netem ({spec}) passed nothing"
    assert dropped > 0 or "loss" not in spec, f"the WAN netem ({spec}) dropped nothing in {passed} packets"
    return {"spec": spec, "passed": passed, "dropped": dropped}


async def run_fleet(fleet: Fleet, args) -> dict:
    log_dir = RESULTS / "server-events-logs" / fleet.name
    async with Namespaces(log_dir) as spaces:
        topo = await HaTopology.build(
            spaces.make_netns, spaces.ipr_factory, spaces.processes, Path(f"/tmp/server-events-{fleet.name}"),
            apiservers=3, shoots=2, pc_env=fleet.daemon_env, tc_env=fleet.daemon_env, bond_env=fleet.bond_env,
            start_daemons=False,
        )
        for shoot in topo.shoots:
            topo.start_tunnel_controller(shoot)
        for api in topo.apiservers:
            topo.start_path_controller(api, module=fleet.path_controller)
        for shoot in topo.shoots if args.wan else ():
            topo.underlay_netem(shoot, args.wan)
        udp_echo = await UdpEchoServer(topo.shoot_net, SHOOT_TARGETS).start()
        tcp_echo = await TcpEchoServer(topo.shoot_net).start()
        scenarios, started = {}, time.monotonic()
        try:
            bench = Bench(topo, fleet, args, log_dir)
            await bench.settle()
            async with bench.probe(topo.apiservers[0]) as probe:
                idle_before, total_before = cpu_idle_and_total()
                await asyncio.sleep(10)
                idle_after, total_after = cpu_idle_and_total()
                round_trip = probe.round_trip_ms()
            idle_cpu = 100 * (idle_after - idle_before) / (total_after - total_before)
            log(f"{fleet.name}: converged, round trip {round_trip:.1f} ms, CPU idle {idle_cpu:.0f} %")
            for scenario in args.scenarios:
                log(f"{fleet.name}: {scenario}")
                scenarios[scenario], fit = await run_scenario(bench, scenario, args.runs)
                if not fit:
                    log(f"{fleet.name}: stopped after {scenario}: the fleet did not settle")
                    break
            wan = wan_counters(topo, args.wan) if args.wan else None
        finally:
            udp_echo.close()
            await tcp_echo.aclose()
    return {
        "settings": {"bond": fleet.bond_env, "daemons": fleet.daemon_env, "path_controller": fleet.path_controller},
        "round_trip_ms": round_trip,
        "idle_cpu_percent": idle_cpu,
        "wan": wan,
        "minutes": (time.monotonic() - started) / 60,
        "load_average_at_end": os.getloadavg(),
        "scenarios": scenarios,
    }


async def run(args) -> dict:
    fleets = {}
    for name in args.fleets:
        log(f"building the {name} fleet")
        fleets[name] = await run_fleet(FLEETS[name], args)
    return {
        "benchmark": "server_events",
        "environment": environment(),
        "topology": "2 OpenVPN servers (keepalive 10 30), 3 kube-apiservers, 2 vpn-shoots (connect-retry 1 5), "
                    "one fleet after the other, inside UML",
        "runs": args.runs,
        "signal": args.signal,
        "down_seconds": args.down_seconds,
        "blackhole_timeout": args.blackhole_timeout,
        "wan": args.wan,
        "stream_interval": STREAM_INTERVAL,
        "scenarios": args.scenarios,
        "fleets": fleets,
    }


# --- figures, table, command line (pure but for printing) ---


def figures(result: dict) -> dict[str, float | None]:
    """Our fleet's figures that benchmarks/targets.py has targets for (None: not run;
    NaN, a miss, when a run of the scenario failed)."""
    ours = (result["fleets"].get(OURS) or {}).get("scenarios", {})
    nan = float("nan")

    def ms(scenario: str, figure: str, statistic: str) -> float | None:
        got = ours.get(scenario)
        if got is None:
            return None
        if got["failed"] or figure not in got["seconds"]:
            return nan
        return 1000 * got["seconds"][figure][statistic]

    def over_all(value: Callable[[dict], float], combine) -> float | None:
        if not ours:
            return None
        return nan if any(s["failed"] for s in ours.values()) else combine(value(s) for s in ours.values())

    return {
        "kill_p99": ms("roll", "kill_gap", "p99"),
        "return_gap_p99": ms("roll", "return_gap", "p99"),
        "blackhole_p99": ms("blackhole", "traffic_again", "p99"),
        "switches": over_all(lambda s: s["switches"], sum),
        "separation_max": over_all(lambda s: 1000 * s["seconds"]["separation"]["max"], max),
        "tcp_broken": over_all(lambda s: s["runs"] - s["tcp_survived"], sum),
    }


def table_rows(result: dict) -> list[tuple[str, str, str, str]]:
    """(figure, vpn2 profile, ours, target) for every scenario that ran."""
    def t(key: str) -> str:
        return targets.target("server_events", key).text

    def seconds(figure: str, statistic: str = "p99"):
        def render(got: dict) -> str:
            values = got["seconds"].get(figure)
            if statistic == "p99" or not values:
                return p50_p99_ms(values)
            return f"{1000 * values['p50']:.0f} / {1000 * values['max']:.0f} ms"
        return render

    common = [
        ("  longest separation of a pod, p50 / max", seconds("separation", "max"), f"{t('separation_max')} max"),
        ("  open TCP stream survived", lambda g: f"{g['tcp_survived']}/{g['runs']}", f"{t('tcp_broken')}"),
        ("  primary vpn-shoot switches", lambda g: f"{g['switches']:.0f}", t("switches")),
        ("  failed runs (a wait ran out)", lambda g: str(len(g["failed"])), "(none expected)"),
    ]
    cap = result["blackhole_timeout"]
    layout = {
        "roll": [
            (f"server roll ({result['signal']}): kill → traffic again, p50 / p99", seconds("kill_gap"),
             f"{t('kill_p99')} p99"),
            ("  kill → datagrams lost (by send time: no measuring delay), p50 / p99", seconds("kill_outage"),
             "(measured)"),
            ("  return → longest gap until 2 s after the last move, p50 / p99", seconds("return_gap"),
             f"{t('return_gap_p99')} p99"),
        ],
        "blackhole": [
            ("black hole, default settings: traffic again, p50 / p99", seconds("traffic_again"),
             f"{t('blackhole_p99')} p99"),
            (f"  streams not answered within {cap:.0f} s (counted as {cap:.0f} s)", lambda g: str(g["timeouts"]),
             "(measured)"),
            ("  runs with every tap0 carrier up when traffic was back",
             lambda g: f"{g['flags'].get('tap0 carrier up when traffic was back', 0)}/{g['runs']}", "(measured)"),
        ],
        "pod-start": [
            ("pod restart during a roll: restart → answered, p50 / p99", seconds("restart_answered"), "(measured)"),
            ("  restart → on the vpn-shoots' server, p50 / p99", seconds("restart_with_fleet"), "(measured)"),
        ],
        "flap": [
            ("lone client flap: client back → answered, p50 / p99", seconds("reconnect_answered"), "(measured)"),
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
    rows.append(("no event: round trip through the VPN, median", *(
        f"{fleets[f]['round_trip_ms']:.1f} ms" if f in fleets else "" for f in (VPN2, OURS)), "(measured)"))
    rows.append(("no event: CPU idle (the streams flowing)", *(
        f"{fleets[f]['idle_cpu_percent']:.0f} %" if f in fleets else "" for f in (VPN2, OURS)), "(measured)"))
    if result["wan"]:
        rows.append((f"WAN on the vpn-shoots' underlay ({result['wan']}): passed / dropped", *(
            f"{fleets[f]['wan']['passed']} / {fleets[f]['wan']['dropped']}" if fleets.get(f, {}).get("wan") else ""
            for f in (VPN2, OURS)), "(proof)"))
    return rows


def print_table(result: dict) -> None:
    print_comparison(table_rows(result))
    for fleet, got in result["fleets"].items():
        for scenario, values in got["scenarios"].items():
            if values["moves"]:
                print(f"{fleet}, {scenario}: steering moves {values['moves']}")
            for failure in values["failed"]:
                print(f"{fleet}, {scenario}, run {failure['run']} failed: {failure['error']}")


def result_name(scenarios: list[str], fleets: list[str], wan: str | None) -> str:
    """results/<name>.json: a partial run (or one with a WAN) does not overwrite the full one."""
    parts = [*(scenarios if set(scenarios) != set(SCENARIOS) else []),
             *(fleets if set(fleets) != set(FLEETS) else []), *(["wan"] if wan else [])]
    return "-".join(["server_events", *parts])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=10, help="runs of each scenario per fleet (default 10)")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS),
                        help=f"comma-separated subset of {','.join(SCENARIOS)} (default: all)")
    parser.add_argument("--fleets", default=",".join(FLEETS), help=f"comma-separated subset of {','.join(FLEETS)}")
    parser.add_argument("--signal", choices=sorted(SIGNALS), default="alternate",
                        help="what kills a server's OpenVPN (alternate: SIGTERM, SIGKILL, ...)")
    parser.add_argument("--down-seconds", type=float, default=0.0,
                        help="a killed server stays down this long after every bond left it (default 0)")
    parser.add_argument("--blackhole-timeout", type=float, default=90.0,
                        help="cap of a black-hole run's wait for traffic (vpn2: ping-restart after 30 s)")
    parser.add_argument("--wan", nargs="?", const=DEFAULT_WAN, default=None,
                        help=f"netem on the vpn-shoots' underlay links for the whole run (default spec: {DEFAULT_WAN.replace('%', '%%')})")
    targets.add_check_option(parser)
    args = parser.parse_args()
    args.scenarios, args.fleets = args.scenarios.split(","), args.fleets.split(",")
    if unknown := set(args.scenarios) - set(SCENARIOS):
        parser.error(f"--scenarios: unknown {', '.join(sorted(unknown))}")
    if unknown := set(args.fleets) - set(FLEETS):
        parser.error(f"--fleets: unknown {', '.join(sorted(unknown))}")
    if args.runs < 1 or args.blackhole_timeout <= 0 or args.down_seconds < 0:
        parser.error("--runs must be ≥ 1, --blackhole-timeout > 0, --down-seconds ≥ 0")
    if args.wan is not None and not args.wan.strip():
        parser.error("--wan: an empty netem spec")
    result = asyncio.run(run(args))
    verdicts = targets.evaluate("server_events", figures(result))
    result["targets"] = targets.as_json(verdicts)
    print_table(result)
    write_result(result_name(args.scenarios, args.fleets, args.wan), result)
    return targets.report(verdicts, args.check)


if __name__ == "__main__":
    sys.exit(main())
