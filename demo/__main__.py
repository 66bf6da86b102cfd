"""Live demo: the whole HA VPN on a real kernel, two failures, measured gaps.

    ./scripts/demo        (installs what it needs, then runs this in the UML sandbox)

Builds 2 OpenVPN servers, 3 kube-apiservers and 2 vpn-shoots in network
namespaces with real OpenVPN, bonding setup, path-controller and
tunnel-controller; shows who routes where; sends a 100 packets/s UDP stream
from every kube-apiserver into the shoot's pod network; kills vpn-shoot-0,
then vpn-seed-server-0; prints the timeline with the measured gaps; cleans up.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from datetime import datetime
from pathlib import Path

from benchmarks.common import Namespaces
from path_controller.probe import Health
from tests.netns import nsutil
from tests.netns.ha_topology import SHOOT_POD, SHOOT_TARGETS, HaTopology
from tests.netns.traffic import UdpEchoServer, UdpStream

STARTED = time.monotonic()


def say(text: str = "") -> None:
    print(f"[{time.monotonic() - STARTED:6.1f}s] {text}" if text else "", flush=True)


_rtt_seen: dict[tuple[str, int], tuple[float, float]] = {}  # (apiserver, target) → (sum, count)


async def view(topo: HaTopology) -> None:
    """Who routes where, probe state and RTT per target, tunnels per vpn-shoot."""
    print()
    print(f"  {'kube-apiserver':<20} {'primary':<12} " + "  ".join(f"{s.name:<22}" for s in topo.shoots))
    for api in topo.apiservers:
        _, metrics = await topo.http(api, "/metrics")
        primary = nsutil.metric_value(metrics, "path_controller_primary_target")
        cells = []
        for j, _shoot in enumerate(topo.shoots):
            state = next(
                (h.value for h in Health
                 if nsutil.metric_value(metrics, "path_controller_target_state", target=str(j), path_controller_target_state=h.value) == 1),
                "?",
            )
            total = nsutil.metric_value(metrics, "path_controller_probe_rtt_seconds_sum", target=str(j))
            count = nsutil.metric_value(metrics, "path_controller_probe_rtt_seconds_count", target=str(j))
            # RTT of the answers since the previous view, not since start: a dead target shows "-".
            last_total, last_count = _rtt_seen.get((api.name, j), (0.0, 0.0))
            _rtt_seen[(api.name, j)] = (total, count)
            answers = count - last_count
            rtt = f"{1000 * (total - last_total) / answers:.1f} ms" if answers else "-"
            cells.append(f"{state:<8} rtt {rtt:<10}")
        where = f"vpn-shoot-{int(primary)}" if primary >= 0 else "-"
        print(f"  {api.name:<20} {where:<12} " + "  ".join(f"{c:<22}" for c in cells))
    print()
    for shoot in topo.shoots:
        daemon = shoot.processes.get("tunnel-controller")
        if daemon is not None and daemon.popen.poll() is not None:
            print(f"  {shoot.name:<12} (killed)")
            continue
        tunnels = await topo.shoot_tunnels(shoot)
        owners = {api.bond_address: api.name for api in topo.apiservers}
        listed = ", ".join(f"{name}→{owners.get(remote, remote)}" for remote, name in sorted(tunnels.items(), key=lambda i: i[1]))
        print(f"  {shoot.name:<12} tunnels: {listed}")
    print()


def switch_events(topo: HaTopology, since_wall: float) -> list[tuple[float, str]]:
    """(wall time, text) of 'primary switched' events in the path-controllers' logs."""
    events = []
    for api in topo.apiservers:
        for line in api.processes["path-controller"].output().splitlines():
            if '"primary switched"' not in line:
                continue
            entry = json.loads(line)
            when = datetime.fromisoformat(entry["ts"]).timestamp()
            if when >= since_wall:
                events.append((when, f"{api.name}: primary vpn-shoot-{entry['old']} → vpn-shoot-{entry['new']} ({entry['reason']})"))
    return sorted(events)


async def failure(topo: HaTopology, streams: dict, title: str, inject) -> dict:
    say(f"*** {title}")
    await asyncio.sleep(1)
    t0, wall0 = time.monotonic(), time.time()
    inject()
    await asyncio.sleep(6)
    end = time.monotonic()
    gaps = {}
    for name, stream in streams.items():
        gap = stream.longest_gap(t0 - 0.5, end)
        lost, sent = stream.loss(t0, end - 1)
        gaps[name] = gap
        say(f"    {name}: longest gap in replies {1000 * gap:6.0f} ms, {lost} of {sent} packets lost")
    for when, text in switch_events(topo, wall0):
        say(f"    +{1000 * (when - wall0):5.0f} ms  {text}")
    return gaps


async def main() -> int:
    workdir = Path("/tmp/ha-vpn-demo")
    say("building: 2 vpn-seed-servers, 3 kube-apiservers, 2 vpn-shoots, real OpenVPN (TLS), bonding setup, both daemons")
    async with Namespaces(workdir / "logs") as spaces:
        topo = await HaTopology.build(spaces.make_netns, spaces.ipr_factory, spaces.processes, workdir)
        echo = await UdpEchoServer(topo.shoot_net, SHOOT_TARGETS).start()
        say("waiting until every path-controller routes through a healthy vpn-shoot and every vpn-shoot has its tunnels")
        await topo.wait_converged(timeout=120)
        say("converged")
        await view(topo)
        streams = {api.name: await UdpStream(api.ns, str(SHOOT_POD)).start() for api in topo.apiservers}
        for stream in streams.values():
            await stream.wait_flowing()
        say(f"UDP stream, 100 packets/s, from every kube-apiserver to shoot pod {SHOOT_POD}")
        on_shoot0 = [api.name for api in topo.apiservers if await topo.primary_of(api) == 0]
        shoot_gaps = await failure(
            topo, streams, f"killing vpn-shoot-0 (primary of {', '.join(on_shoot0) or 'nobody'})",
            lambda: topo.kill_shoot(topo.shoots[0]),
        )
        await view(topo)
        server_gaps = await failure(
            topo, streams, "killing vpn-seed-server-0 (every bond fails over to tap1)",
            lambda: topo.kill(topo.servers[0], "openvpn"),
        )
        await view(topo)
        say("summary (gap = longest time without replies on the stream)")
        for name in streams:
            moved = " (its primary died)" if name in on_shoot0 else ""
            say(f"    {name}: vpn-shoot-0 killed {1000 * shoot_gaps[name]:5.0f} ms{moved}; "
                f"vpn-seed-server-0 killed {1000 * server_gaps[name]:5.0f} ms")
        say("vpn2 needs 10-12 s for a dead vpn-shoot (10 × 1 s pings per round); see the benchmark for p50/p99")
        for stream in streams.values():
            stream.close()
        echo.close()
        say("cleaning up")
    say("done")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
