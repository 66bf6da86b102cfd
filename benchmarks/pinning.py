"""Costs of connection pinning on a real kernel, in the pinning lab (a kube-apiserver namespace,
two paths, the shoot network; tests/netns/pinning_lab.py).

    .venv/bin/python -m benchmarks.pinning --path veth        # host kernel (has SOCK_DESTROY, no ip6tnl)
    .venv/bin/python -m kernel_sandbox -- .venv/bin/python -m benchmarks.pinning --path ip6tnl

Measures:
* the path-controller's side: one ``new_connections_to``, a whole switch (three
  transactions and the main-table routes), ``close_connections`` of 20 flows;
* the data path: kernel CPU (sys) and wall time per 64-byte UDP datagram sent
  through the path, min and median over rounds, with no pinning, with a
  connection pinned to the main table's vpn-shoot (skips the re-route), and
  pinned to the other one (every packet routed again by its mark). vpn2's
  filter rules are in place throughout, so conntrack runs in every case.
  CPU figures from the UML guest are tick-based (HZ=100) and useless; its wall
  times are noisy.
Writes results/pinning-<path>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import socket
import statistics
import time

from benchmarks.common import Namespaces, environment, summary, write_result
from path_controller.pinning import ConnectionPinning
from tests.netns import nsutil
from tests.netns.pinning_lab import DST4, DST6, PROTO, PinningLab, UdpFlow, ViaEchoServer

SINK_PORT = 7200
VPN2_FILTER = [  # vpn2's seed rules (vpn2-behavior §4.4): they switch conntrack on in the pod
    ["ip6tables-legacy", "-A", "INPUT", "-i", "bond0+", "-p", "icmpv6", "-j", "ACCEPT"],
    *([tool, "-A", "INPUT", "-m", "state", "--state", "RELATED,ESTABLISHED", "-i", "bond0+", "-j", "ACCEPT"]
      for tool in ("iptables-legacy", "ip6tables-legacy")),
    *([tool, "-A", "INPUT", "-i", "bond0+", "-j", "DROP"] for tool in ("iptables-legacy", "ip6tables-legacy")),
]  # fmt: skip


def blast(ns: str, target: str, count: int) -> tuple[float, float]:
    """Send ``count`` datagrams on one new connection: (sys µs, wall µs) per datagram."""
    family = socket.AF_INET6 if ":" in target else socket.AF_INET
    sock = nsutil.ns_socket(ns, family, socket.SOCK_DGRAM)
    sock.connect((target, SINK_PORT))
    payload = b"x" * 64
    wall, before = time.perf_counter(), resource.getrusage(resource.RUSAGE_THREAD)
    for _ in range(count):
        sock.send(payload)
    after = resource.getrusage(resource.RUSAGE_THREAD)
    wall = time.perf_counter() - wall
    sock.close()
    return (after.ru_stime - before.ru_stime) / count * 1e6, wall / count * 1e6


async def timed(action) -> float:
    started = time.perf_counter()
    await action
    return (time.perf_counter() - started) * 1000


async def control_plane(lab: PinningLab, pinning: ConnectionPinning) -> dict:
    new = [await timed(pinning.new_connections_to(i % 2)) for i in range(50)]
    switches = [await timed(lab.switch(pinning, i % 2)) for i in range(30)]
    await lab.switch(pinning, 0)
    flows = [UdpFlow(lab.seed, (DST4, DST6)[i % 2]) for i in range(20)]
    try:
        for flow in flows:
            await flow.exchange()
        started = time.perf_counter()
        closed = await pinning.close_connections(0)
        close_ms = (time.perf_counter() - started) * 1000
    finally:
        for flow in flows:
            flow.close()
    await pinning.allow(0)
    return {
        "new_connections_to_ms": summary(new),
        "switch_ms": summary(switches),
        "close_connections_20_flows_ms": close_ms,
        "closed": closed._asdict(),
        "sockets_destroyable": pinning.sockets_destroyable,
    }


async def data_path(lab: PinningLab, rounds: int, count: int) -> dict:
    modes = {"no pinning": None, "pinned to the main table's vpn-shoot": 0, "pinned to the other vpn-shoot": 1}
    results: dict[str, list[tuple[float, float]]] = {mode: [] for mode in modes}
    await asyncio.to_thread(blast, lab.seed, DST4, 2000)  # warm up
    for round_ in range(rounds):
        for mode, target in modes.items():
            pinning = None
            if target is not None:
                pinning = ConnectionPinning(lab.ipr, PROTO, netns=lab.seed)
                await pinning.install(lab.routed, await lab.tunnels())
                await pinning.new_connections_to(target)
                await pinning.main_routes_through(0)  # the main table routes through vpn-shoot 0
            try:
                results[mode].append(await asyncio.to_thread(blast, lab.seed, (DST4, DST6)[round_ % 2], count))
            finally:
                if pinning is not None:
                    await pinning.remove()
                    pinning.close()
    return {
        mode: {
            "sys_us_min": round(min(s for s, _ in values), 3),
            "sys_us_median": round(statistics.median(s for s, _ in values), 3),
            "wall_us_min": round(min(w for _, w in values), 3),
            "wall_us_median": round(statistics.median(w for _, w in values), 3),
        }
        for mode, values in results.items()
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--path", choices=("veth", "ip6tnl"), default="veth")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--datagrams", type=int, default=100_000)
    args = parser.parse_args()
    async with Namespaces(nsutil.REPO / "results" / "pinning-logs") as spaces:
        lab = await PinningLab(spaces.make_netns, spaces.ipr_factory, path=args.path).build()
        for command in VPN2_FILTER:
            nsutil.run_in(lab.seed, command)
        server = await ViaEchoServer(lab.dst).start()
        sinks = []
        for family, address in ((socket.AF_INET, DST4), (socket.AF_INET6, DST6)):
            sink = nsutil.ns_socket(lab.dst, family, socket.SOCK_DGRAM)  # never read: drops at a full buffer
            sink.bind((address, SINK_PORT))
            sinks.append(sink)
        pinning = ConnectionPinning(lab.ipr, PROTO, netns=lab.seed)
        try:
            if reason := await pinning.probe():
                raise SystemExit(f"benchmarks.pinning: {reason}")
            await pinning.install(lab.routed, await lab.tunnels())
            control = await control_plane(lab, pinning)
            await pinning.remove()
            datagrams = await data_path(lab, args.rounds, args.datagrams)
        finally:
            pinning.close()
            await server.aclose()
            for sink in sinks:
                sink.close()
    result = {"environment": environment(), "path": args.path, "control_plane": control, "per_datagram": datagrams}
    write_result(f"pinning-{args.path}", result)


if __name__ == "__main__":
    asyncio.run(main())
