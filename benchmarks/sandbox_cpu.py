"""Where the sandbox's one vCPU goes in the HA topology: per program, idle and with traffic.

    .venv/bin/python -m kernel_sandbox --timeout 600 --mem 4G -- \\
        .venv/bin/python -m benchmarks.sandbox_cpu [KEY=VALUE ...]

KEY=VALUE settings go to both daemons (e.g. SERVER_STEERING=false). Prints the
share of the vCPU idle and used per program (path-controller, tunnel-controller,
openvpn, the harness) over WINDOW seconds, first with no traffic, then with a
UDP and a TCP stream at 20/s from each kube-apiserver; writes
results/sandbox_cpu.json. No targets: it explains the other benchmarks' figures
(docs/benchmarks.md, "The sandbox's one vCPU").
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

from benchmarks.common import Namespaces, cpu_idle_and_total, cpu_seconds, log
from tests.netns import nsutil
from tests.netns.ha_topology import SHOOT_POD, SHOOT_TARGETS, HaTopology
from tests.netns.traffic import TcpEchoServer, TcpStream, UdpEchoServer, UdpStream

WINDOW = 20.0  # seconds each figure is taken over
STREAM_INTERVAL = 0.05


def program_of(pid: str) -> str | None:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
    except OSError:
        return None
    text = b" ".join(argv).decode(errors="replace")
    for name in ("path_controller", "tunnel_controller"):
        if f"-m {name}" in text:
            return name.replace("_", "-")
    if argv and argv[0].endswith(b"openvpn"):
        return "openvpn"
    return "harness" if "benchmarks.sandbox_cpu" in text else None


def cpu_used() -> dict[str, float]:
    """CPU seconds used so far per program."""
    used: dict[str, float] = {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or (program := program_of(pid)) is None:
            continue
        try:
            used[program] = used.get(program, 0.0) + cpu_seconds(int(pid))
        except OSError:  # the process ended meanwhile
            continue
    return used


async def measure() -> dict:
    before, (idle_before, total_before) = cpu_used(), cpu_idle_and_total()
    await asyncio.sleep(WINDOW)
    after, (idle_after, total_after) = cpu_used(), cpu_idle_and_total()
    elapsed = total_after - total_before
    share = {name: round((after[name] - before.get(name, 0.0)) / elapsed * 100, 1) for name in after}
    return {"idle_percent": round((idle_after - idle_before) / elapsed * 100, 1),
            "used_percent": dict(sorted(share.items(), key=lambda kv: -kv[1]))}


async def main(env: dict[str, str]) -> dict:
    logs = nsutil.REPO / "results" / "sandbox-cpu-logs"
    result = {"benchmark": "sandbox_cpu", "settings": env, "window_seconds": WINDOW}
    async with Namespaces(logs, long_lived=True) as spaces:
        topo = await HaTopology.build(spaces.make_netns, spaces.ipr_factory, spaces.processes,
                                      Path("/tmp/ha-sandbox-cpu"), pc_env=env, tc_env=env)
        udp_echo = await UdpEchoServer(topo.shoot_net, SHOOT_TARGETS).start()
        tcp_echo = await TcpEchoServer(topo.shoot_net).start()
        try:
            await topo.wait_converged()
            await asyncio.sleep(3)
            result["idle"] = await measure()
            log(f"no traffic: {result['idle']}")
            streams = [await UdpStream(a.ns, str(SHOOT_POD), interval=STREAM_INTERVAL).start() for a in topo.apiservers]
            streams += [await TcpStream(a.ns, str(SHOOT_POD), interval=STREAM_INTERVAL).start() for a in topo.apiservers]
            await asyncio.sleep(3)
            result["streams"] = await measure()
            log(f"a UDP and a TCP stream at 20/s from each kube-apiserver: {result['streams']}")
            for stream in streams:
                stream.close()
        finally:
            udp_echo.close()
            await tcp_echo.aclose()
    return result


if __name__ == "__main__":
    settings = dict(arg.split("=", 1) for arg in sys.argv[1:])
    outcome = asyncio.run(main(settings))
    print(json.dumps(outcome))
    (nsutil.REPO / "results").mkdir(exist_ok=True)
    name = "sandbox_cpu" + "".join(f"-{k.lower()}-{v}" for k, v in settings.items())
    (nsutil.REPO / "results" / f"{name}.json").write_text(json.dumps(outcome, indent=2))
