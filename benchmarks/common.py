"""What the benchmarks share: namespaces and netlink handles with cleanup,
process sampling (RSS, CPU), percentiles, primary switches, the comparison
table (vpn2 profile beside ours), result output."""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

from netlink_adapter import AsyncIPRoute
from tests.netns import nsutil

RESULTS = nsutil.REPO / "results"
OURS, VPN2 = "ours", "vpn2-profile"


def log(text: str) -> None:
    print(text, flush=True)


class Namespaces:
    """``make_netns`` / ``ipr_factory`` / ``processes`` like the test fixtures, torn down on exit."""

    def __init__(self, log_dir: Path, long_lived: bool = False):
        self.created: list[str] = []
        self.iprs: list[AsyncIPRoute] = []
        self.long_lived = long_lived
        log_dir.mkdir(parents=True, exist_ok=True)
        self.processes = nsutil.ProcessGroup(log_dir, long_lived=long_lived)

    def make_netns(self, prefix: str = "b") -> str:
        name = nsutil.create_netns(prefix)
        self.created.append(name)
        if self.long_lived:
            nsutil.LONG_LIVED_NAMESPACES.add(name)
        return name

    async def ipr_factory(self, ns: str) -> AsyncIPRoute:
        ipr = AsyncIPRoute(netns=ns)
        self.iprs.append(ipr)
        return ipr

    async def __aenter__(self) -> Namespaces:
        return self

    async def __aexit__(self, *exc) -> None:
        self.processes.kill_all()
        for ipr in self.iprs:
            ipr.close()
        for ns in reversed(self.created):
            nsutil.delete_netns(ns)
            nsutil.LONG_LIVED_NAMESPACES.discard(ns)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_idle_and_total() -> tuple[float, float]:
    """Seconds the machine's CPUs spent idle (idle + iowait) and in all, from /proc/stat."""
    ticks = [int(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (ticks[3] + ticks[4]) / os.sysconf("SC_CLK_TCK"), sum(ticks[:8]) / os.sysconf("SC_CLK_TCK")


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def summary(values: list[float]) -> dict:
    return {
        "n": len(values),
        "p50": percentile(values, 50),
        "p99": percentile(values, 99),
        "max": max(values) if values else float("nan"),
        "mean": statistics.fmean(values) if values else float("nan"),
    }


def environment() -> dict:
    return {
        "kernel": platform.release(),
        "sandbox": os.environ.get("SANDBOX_KERNEL", "host"),
        "python": sys.version.split()[0],
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def write_result(name: str, result: dict) -> Path:
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(json.dumps(result, default=str, separators=(",", ":")))
    return path




async def primary_switches(topo) -> dict[str, float]:
    """Per kube-apiserver of ``topo`` (an HaTopology): its switches of the primary vpn-shoot so far."""
    return {
        api.name: await topo.metric(api, "path_controller_switches_total", reason="primary down")
        for api in topo.apiservers
    }


async def dump_metrics(members, directory: Path, prefix: str = "") -> None:
    """Every member's /metrics into ``directory`` (``<prefix><name>-metrics.txt``), to explain a failure."""
    directory.mkdir(parents=True, exist_ok=True)
    for member in members:
        try:
            _, body = await nsutil.http_get_async(member.ns, 8080, "/metrics")
        except OSError as error:
            body = f"unreachable: {error}"
        (directory / f"{prefix}{member.name}-metrics.txt").write_text(body)


def p50_p99_ms(values: dict | None) -> str:
    """A ``summary`` as a table cell: ``p50 / p99 ms``."""
    if not values or not values["n"]:
        return ""
    return f"{1000 * values['p50']:.0f} / {1000 * values['p99']:.0f} ms"


def print_comparison(rows: list[tuple[str, str, str, str]]) -> None:
    """Rows of (figure, vpn2 profile, ours, target) as an aligned table."""
    width = max(len(row[0]) for row in rows)
    print(f"\n{'figure'.ljust(width)}  {'vpn2 profile':>18}  {'ours':>22}  target")
    for name, theirs, ours, target in rows:
        print(f"{name.ljust(width)}  {theirs:>18}  {ours:>22}  {target}")
