"""Benchmark of the tunnel-controller against a real kernel (run it in the sandbox):

    .venv/bin/python -m kernel_sandbox --timeout 1800 --mount "$PWD" -- .venv/bin/python -m benchmarks.tunnel_controller

``--only thousand`` runs just the 1 000-source part and prints its figures;
``--trials``, ``--sources`` and ``--steady-seconds`` make a short run (the
1 000-source targets count only with 1 000 sources). ``--check`` exits 1 when a
figure misses its target (benchmarks/targets.py).

Prints a table with each figure's target and writes results/tunnel_controller.json. What it measures:

- first announcement → back-route: a new kube-apiserver (a new seed address)
  announces once; "visible" is when the route shows up in a netlink
  listener in the shoot namespace, "usable" when the first echo through it
  is answered (sent as soon as the route is visible, retried until answered).
  Both from just before the datagram is sent; 30 trials.
- 1 000 announcing sources (MAX_PEERS raised): time from the first datagram
  until all 1 000 back-routes are visible, /healthz latency meanwhile, and
  for scale the same kernel work done by ``ip -batch`` (the floor this
  kernel imposes).
- steady state (a few peers announcing every 2 s): RSS and CPU over 30 s.
- a flood of invalid datagrams at 10 000/s for 10 s from rotating senders:
  RSS before, peak and after, /healthz latency during it.
- self-heal (tunnel deleted → back-route back, 10 trials) and SIGTERM → exit.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import ctypes
import json
import os
import socket
import struct
import subprocess
import sys
import time
from ipaddress import IPv6Address
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks import targets  # noqa: E402
from benchmarks.common import Namespaces  # noqa: E402
from bonding.plan import shoot_tunnel_name  # noqa: E402
from netlink_adapter.events import EventStream  # noqa: E402
from netlink_adapter.headers import RouteHeader  # noqa: E402
from netlink_adapter.ip6tnl import ensure_ip6tnl  # noqa: E402
from netlink_adapter.links import link_index  # noqa: E402
from tests.netns import nsutil  # noqa: E402
from tests.netns.topology import PLAN, BondLab  # noqa: E402
from tests.netns.tunnel_tools import (  # noqa: E402
    ROUTE_PROTOCOL,
    add_bond_addresses,
    add_host_address,
    http_get,
    metrics,
    ns_socket,
    route_via,
)

RESULTS = REPO / "results"
LOGS = RESULTS / "bench-logs"
PYTHON = sys.executable
SHOOT_V4 = "100.64.0.1"
TRIALS = 30
SOURCES = 1000  # the 1 000-source targets are about this many
HEAL_TRIALS = 10
STEADY_SECONDS = 30
CLK_TCK = os.sysconf("SC_CLK_TCK")


# --- plumbing ---------------------------------------------------------------


class Daemon:
    def __init__(self, ns: str, name: str, **env):
        self.log = RESULTS / f"tunnel_controller-{name}.log"
        with open(self.log, "wb") as out:
            self.popen = subprocess.Popen(
                nsutil.ns_exec(ns, [PYTHON, "-m", "tunnel_controller"]),
                env=nsutil.daemon_env(ROUTE_PROTOCOL=ROUTE_PROTOCOL, **env), stdout=out, stderr=subprocess.STDOUT, cwd=REPO,
            )

    async def wait_for_log(self, msg: str, timeout: float = 60) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.log.read_text().splitlines():
                if line.startswith("{") and json.loads(line).get("msg") == msg:
                    return json.loads(line)
            if self.popen.poll() is not None:
                raise RuntimeError(f"daemon exited: {self.log.read_text()[-2000:]}")
            await asyncio.sleep(0.05)
        raise RuntimeError(f"no {msg!r} in {self.log}")

    def rss_mib(self) -> float:
        for line in open(f"/proc/{self.popen.pid}/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise RuntimeError("no VmRSS")

    def cpu_seconds(self) -> float:
        fields = open(f"/proc/{self.popen.pid}/stat").read().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime

    def sigterm(self) -> tuple[int, float]:
        started = time.monotonic()
        self.popen.terminate()
        code = self.popen.wait(10)
        return code, time.monotonic() - started

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait()


class RouteWatch:
    """When each IPv4 back-route (ROUTE_PROTOCOL) became visible in a namespace."""

    def __init__(self, ns: str):
        # Only additions of back-routes are decoded: the floods add a thousand other changes.
        self.stream = EventStream(
            lambda header: isinstance(header, RouteHeader) and not header.deleted and header.proto == ROUTE_PROTOCOL,
            links=False, ipv6_routes=False, netns=ns,
        )
        self.seen: dict[str, float] = {}
        self.changed = asyncio.Event()

    async def start(self) -> RouteWatch:
        await self.stream.start()
        self.task = asyncio.create_task(self._run())
        return self

    async def _run(self) -> None:
        async for event in self.stream:
            self.seen.setdefault(str(event.route.dst.network_address), time.monotonic())
            self.changed.set()

    async def wait(self, dst: str, timeout: float = 10) -> float:
        async with asyncio.timeout(timeout):
            while dst not in self.seen:
                self.changed.clear()
                await self.changed.wait()
        return self.seen[dst]

    def stop(self) -> None:
        self.task.cancel()
        self.stream.close()


def sender(ns: str) -> socket.socket:
    """One UDP6 socket that sends from any of the seed's addresses (IPV6_PKTINFO)."""
    return ns_socket(ns, socket.AF_INET6, socket.SOCK_DGRAM)


def send_from(sock: socket.socket, source: IPv6Address, target: IPv6Address, payload: bytes) -> None:
    pktinfo = struct.pack("16sI", source.packed, 0)
    sock.sendmsg([payload], [(socket.IPPROTO_IPV6, socket.IPV6_PKTINFO, pktinfo)], 0, (str(target), 5400))


async def echo(sock: socket.socket, dst: str, seq: int, timeout: float = 0.2) -> bool:
    """One ICMP echo from a ping socket; True if answered."""
    loop = asyncio.get_running_loop()
    try:
        sock.sendto(struct.pack("!BBHHH", 8, 0, 0, 0, seq) + b"bench", (dst, 0))
    except OSError:
        return False
    try:
        async with asyncio.timeout(timeout):
            while True:
                data = await loop.sock_recv(sock, 1500)
                if data[0] == 0 and struct.unpack("!H", data[6:8])[0] == seq:
                    return True
    except TimeoutError:
        return False


class NsSockets:
    """Sockets in a namespace without forking: a worker thread that entered it with setns(2)
    (a fork of this process costs tens of milliseconds under UML and would skew the timing)."""

    CLONE_NEWNET = 0x40000000

    def __init__(self, ns: str):
        self.executor = concurrent.futures.ThreadPoolExecutor(1, initializer=self._enter, initargs=(ns,))

    def _enter(self, ns: str) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        fd = os.open(f"/run/netns/{ns}", os.O_RDONLY)
        if libc.setns(fd, self.CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), "setns")
        os.close(fd)

    async def socket(self, family: int, kind: int) -> socket.socket:
        return await asyncio.get_running_loop().run_in_executor(self.executor, socket.socket, family, kind)

    def close(self) -> None:
        self.executor.shutdown()


async def healthz_probe(ns: str, stop: asyncio.Event, interval: float = 0.25) -> list[float]:
    """GET /healthz until ``stop``; the latency of each exchange."""
    loop = asyncio.get_running_loop()
    sockets = NsSockets(ns)
    latencies = []
    while not stop.is_set():
        sock = await sockets.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        started = time.monotonic()
        try:
            async with asyncio.timeout(30):
                await loop.sock_connect(sock, ("127.0.0.1", 8080))
                reader, writer = await asyncio.open_connection(sock=sock)
                writer.write(b"GET /healthz HTTP/1.0\r\n\r\n")
                ok = (await reader.read()).startswith(b"HTTP/1.0 200")
                writer.close()
        except (OSError, TimeoutError):
            ok = False
            sock.close()
        latencies.append(time.monotonic() - started if ok else float("inf"))
        try:
            await asyncio.wait_for(stop.wait(), interval)
        except asyncio.TimeoutError:
            pass
    sockets.close()
    return latencies


def ms(seconds: float) -> float:
    return round(seconds * 1000, 1)


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def summary(values: list[float]) -> dict:
    """Latencies in ms; an unanswered exchange is recorded as inf and counted."""
    return {"p50_ms": ms(percentile(values, 50)), "p99_ms": ms(percentile(values, 99)), "max_ms": ms(max(values)),
            "n": len(values), "unanswered": sum(1 for v in values if v == float("inf"))}


# --- scenarios ----------------------------------------------------------------


async def first_announcement_and_more(spaces: Namespaces, trials: int, steady_seconds: float) -> dict:
    lab = await BondLab.create(spaces.make_netns, spaces.ipr_factory)
    shoot = await lab.add_shoot(0)
    seed = await lab.add_seed("apiserver", 0x101)
    shoot_ipr, seed_ipr = await lab.ipr(shoot), await lab.ipr(seed)
    await add_host_address(shoot_ipr, SHOOT_V4)
    await route_via(seed_ipr, "100.64.0.0/16", "bond0-ip6tnl0")
    await lab.wait_reachable(seed, shoot)
    daemon = Daemon(shoot.ns, "latency")
    results: dict = {}
    try:
        await daemon.wait_for_log("listening for announcements")
        watch = await RouteWatch(shoot.ns).start()
        udp = sender(seed.ns)
        send_from(udp, seed.address, shoot.address, b"10.96.0.1")  # the seed's own tunnel: answers come back
        await watch.wait("10.96.0.1")
        icmp = ns_socket(shoot.ns, socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_ICMP)
        icmp.bind((SHOOT_V4, 0))
        icmp.setblocking(False)

        visible, usable = [], []
        for k in range(1, trials + 1):
            source = PLAN.seed_client(0x1000 + k)
            pod_ip = f"10.97.0.{k}"
            await add_bond_addresses(seed_ipr, [source])
            await ensure_ip6tnl(seed_ipr, f"bt{k}", source, shoot.address)  # decapsulates on the seed
            await add_host_address(seed_ipr, pod_ip)
            await asyncio.sleep(0.2)
            started = time.monotonic()
            send_from(udp, source, shoot.address, pod_ip.encode())
            visible.append(await watch.wait(pod_ip) - started)
            seq = 0
            while True:
                seq += 1
                if await echo(icmp, pod_ip, seq + 100 * k):
                    usable.append(time.monotonic() - started)
                    break
                if time.monotonic() - started > 10:
                    raise RuntimeError(f"no echo through the tunnel to {pod_ip}")
        results["first_announcement"] = {
            "route_visible": summary(visible), "echo_answered": summary(usable),
            "note": "from just before sendto(); visible = netlink RTM_NEWROUTE seen by another process; "
                    "answered = first ICMP echo through the new back-route, sent once the route is visible",
        }

        # Steady state: three kube-apiservers announcing every 2 s (the others sit idle).
        stop = asyncio.Event()

        async def announce_every_2s():
            while not stop.is_set():
                for k in (1, 2, 3):
                    send_from(udp, PLAN.seed_client(0x1000 + k), shoot.address, f"10.97.0.{k}".encode())
                try:
                    await asyncio.wait_for(stop.wait(), 2)
                except asyncio.TimeoutError:
                    pass

        announcing = asyncio.create_task(announce_every_2s())
        await asyncio.sleep(2)
        cpu0, wall0 = daemon.cpu_seconds(), time.monotonic()
        await asyncio.sleep(steady_seconds)  # the measured window
        cpu = (daemon.cpu_seconds() - cpu0) / (time.monotonic() - wall0)
        probing = asyncio.Event()
        health = asyncio.create_task(healthz_probe(shoot.ns, probing))
        await asyncio.sleep(5)
        probing.set()
        results["steady_state"] = {
            "peers": trials + 1, "announcing": 3, "rss_mib": round(daemon.rss_mib(), 1),
            "cpu_percent_of_one_core": round(100 * cpu, 2), "window_s": steady_seconds,
            "cpu_resolution_percent": round(100 / CLK_TCK / steady_seconds, 3), "healthz": summary(await health),
        }

        # Flood: 10 000 invalid datagrams/s for 10 s from 64 rotating seed-range senders and one outsider.
        flood_sources = [PLAN.seed_client(0xF000 + i) for i in range(64)] + [IPv6Address("fd8f:6d53:b97a:1::c:1")]
        await add_bond_addresses(seed_ipr, flood_sources)
        rss_before = daemon.rss_mib()
        rejected_before = await rejected_total(shoot.ns)
        flooder = subprocess.Popen(
            nsutil.ns_exec(seed.ns, [PYTHON, "-c", FLOODER, str(shoot.address), "10000", "10",
                                     *map(str, flood_sources)]),
            stdout=subprocess.PIPE, text=True,
        )
        probing = asyncio.Event()
        health = asyncio.create_task(healthz_probe(shoot.ns, probing))
        peak = rss_before
        while flooder.poll() is None:
            peak = max(peak, daemon.rss_mib())
            await asyncio.sleep(0.5)
        probing.set()
        latencies = await health
        sent = int(flooder.stdout.read().split()[-1])
        await asyncio.sleep(1)
        results["flood"] = {
            "sent": sent, "rate_per_s": round(sent / 10), "rejected_by_daemon": int(await rejected_total(shoot.ns)
                                                                                    - rejected_before),
            "rss_before_mib": round(rss_before, 1), "rss_peak_mib": round(peak, 1),
            "rss_after_mib": round(daemon.rss_mib(), 1), "healthz": summary(latencies),
        }
        stop.set()
        await announcing

        # Self-heal: delete a tunnel behind the daemon's back; time until its back-route is visible again.
        heal = []
        for k in range(1, min(HEAL_TRIALS, trials) + 1):
            name, pod_ip = shoot_tunnel_name(PLAN.seed_client(0x1000 + k)), f"10.97.0.{k}"
            watch.seen.pop(pod_ip, None)
            index = await link_index(shoot_ipr, name)
            started = time.monotonic()
            await shoot_ipr.link("del", index=index)
            heal.append(await watch.wait(pod_ip) - started)
        results["self_heal"] = summary(heal)
        watch.stop()
        code, seconds = daemon.sigterm()
        results["sigterm"] = {"exit_code": code, "exit_ms": ms(seconds)}
    finally:
        daemon.kill()
    return results


async def rejected_total(ns: str) -> float:
    samples = nsutil.metric_samples(await metrics(ns), "tunnel_controller_announcements_rejected_total")
    assert samples, "no tunnel_controller_announcements_rejected_total exported"
    return sum(value for _, value in samples)


FLOODER = """
import socket, sys, time
target, rate, seconds, sources = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4:]
socks = []
for source in sources:
    s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    s.bind((source, 0))
    socks.append(s)
payloads = [b"garbage", b"10.96.0.1 10.96.0.2", b"x" * 600, b"hvdp1 ips=", b"::1"]
sent, start = 0, time.monotonic()
while True:
    elapsed = time.monotonic() - start
    if elapsed >= seconds:
        break
    due = int(elapsed * rate)
    while sent < due:
        try:
            socks[sent % len(socks)].sendto(payloads[sent % len(payloads)], (target, 5400))
        except OSError:
            pass
        sent += 1
    time.sleep(0.005)
print(sent, flush=True)
"""


async def thousand_sources(spaces: Namespaces, count: int) -> dict:
    lab = await BondLab.create(spaces.make_netns, spaces.ipr_factory)
    shoot = await lab.add_shoot(0)
    seed = await lab.add_seed("apiserver", 0x101)
    seed_ipr = await lab.ipr(seed)
    sources = [PLAN.seed_client(0x2000 + i) for i in range(count)]
    await add_bond_addresses(seed_ipr, sources)
    await lab.wait_reachable(seed, shoot)
    daemon = Daemon(shoot.ns, "thousand", MAX_PEERS=count * 2)
    try:
        await daemon.wait_for_log("listening for announcements")
        watch = await RouteWatch(shoot.ns).start()
        udp = sender(seed.ns)
        pod_ips = {source: f"10.{98 + i // 65536}.{i // 256 % 256}.{i % 256}" for i, source in enumerate(sources)}
        probing = asyncio.Event()
        health = asyncio.create_task(healthz_probe(shoot.ns, probing, interval=0.5))
        started = time.monotonic()
        rounds = 0
        while len(watch.seen) < count and time.monotonic() - started < 120:
            rounds += 1
            for source in sources:  # every path-controller announces once per 2 s
                send_from(udp, source, shoot.address, pod_ips[source].encode())
            deadline = started + 2 * rounds
            while len(watch.seen) < count and time.monotonic() < deadline:
                watch.changed.clear()
                try:
                    await asyncio.wait_for(watch.changed.wait(), max(0.01, deadline - time.monotonic()))
                except asyncio.TimeoutError:
                    pass
        converged = max(watch.seen.values()) - started if len(watch.seen) >= count else None
        first = min(watch.seen.values()) - started
        probing.set()
        latencies = await health
        _, ready = await http_get(shoot.ns, "/readyz")
        watch.stop()
        result = {
            "sources": count, "routes_visible": len(watch.seen),
            "converged_s": round(converged, 2) if converged is not None else None,
            "first_route_ms": ms(first), "announcement_rounds": rounds, "readyz": ready.strip(),
            "healthz_during": summary(latencies), "rss_mib": round(daemon.rss_mib(), 1),
        }
        code, seconds = daemon.sigterm()
        result["sigterm_exit_ms"] = ms(seconds)
        result["kernel_floor_ip_batch_s"] = round(await ip_batch_floor(spaces, count), 2)
    finally:
        daemon.kill()
    return result


async def ip_batch_floor(spaces: Namespaces, count: int) -> float:
    """The same kernel work (``count`` ip6tnl devices up and routes) done by iproute2 in one batch."""
    ns = spaces.make_netns("floor")
    lines = []
    for i in range(count):
        remote = PLAN.seed_client(0x2000 + i)
        name = shoot_tunnel_name(remote)
        lines += [
            f"link add {name} type ip6tnl mode any local {PLAN.shoot_client(0)} remote {remote} encaplimit none",
            f"link set {name} up",
            f"route replace 10.98.{i // 256}.{i % 256}/32 dev {name} proto {ROUTE_PROTOCOL}",
        ]
    batch = RESULTS / "tunnel_controller-floor.batch"
    batch.write_text("\n".join(lines) + "\n")
    started = time.monotonic()
    nsutil.run_in(ns, ["ip", "-batch", str(batch)], timeout=300)
    return time.monotonic() - started


def figures(results: dict) -> dict[str, float | None]:
    """The figures benchmarks/targets.py has targets for (None: not measured in this run)."""
    found: dict[str, float | None] = {}
    if fa := results.get("first_announcement"):
        found["route_visible_p99"] = fa["route_visible"]["p99_ms"]
        found["echo_answered_p99"] = fa["echo_answered"]["p99_ms"]
    if st := results.get("steady_state"):
        found["steady_rss"] = st["rss_mib"]
        found["steady_cpu"] = st["cpu_percent_of_one_core"]
    if fl := results.get("flood"):
        found["flood_rate"] = fl["rate_per_s"]
        found["flood_rss_rise"] = fl["rss_peak_mib"] - fl["rss_before_mib"]
        found["flood_healthz_unanswered"] = fl["healthz"]["unanswered"]
    if sh := results.get("self_heal"):
        found["self_heal_max"] = sh["max_ms"]
    if sg := results.get("sigterm"):
        found["sigterm_exit"] = sg["exit_ms"]
        found["sigterm_code"] = sg["exit_code"]
    th = results.get("thousand_sources")
    if th and th["sources"] == SOURCES:  # fewer sources say nothing about the 1 000-source targets
        converged = th["converged_s"]
        found["thousand_converged"] = float("inf") if converged is None else converged
        found["thousand_healthz_unanswered"] = th["healthz_during"]["unanswered"]
        found["sigterm_exit_thousand"] = th["sigterm_exit_ms"]
    return found


def table(results: dict) -> str:
    def t(key: str) -> str:
        return targets.target("tunnel_controller", key).text

    rows = []
    if fa := results.get("first_announcement"):
        rv, ea = fa["route_visible"], fa["echo_answered"]
        rows += [
            ("first announcement → route visible", f"p50 {rv['p50_ms']} ms, p99 {rv['p99_ms']} ms (n={rv['n']})",
             f"{t('route_visible_p99')} (p99)"),
            ("first announcement → echo answered", f"p50 {ea['p50_ms']} ms, p99 {ea['p99_ms']} ms",
             f"{t('echo_answered_p99')} (p99)"),
        ]
    if th := results.get("thousand_sources"):
        hz = th["healthz_during"]
        rows += [
            (f"{th['sources']} sources → all routes visible", f"{th['converged_s']} s "
             f"(ip -batch floor {th['kernel_floor_ip_batch_s']} s)", t("thousand_converged")),
            ("  /healthz while converging", f"p50 {hz['p50_ms']} ms, max {hz['max_ms']} ms, "
             f"{hz['unanswered']} unanswered", t("thousand_healthz_unanswered")),
            (f"  RSS with {th['sources']} tunnels", f"{th['rss_mib']} MiB", ""),
            (f"  SIGTERM → exit with {th['sources']} tunnels", f"{th['sigterm_exit_ms']} ms", t("sigterm_exit_thousand")),
        ]
    if st := results.get("steady_state"):
        rows += [
            ("steady state RSS", f"{st['rss_mib']} MiB ({st['peers']} peers)", t("steady_rss")),
            ("steady state CPU", f"{st['cpu_percent_of_one_core']} % of a core "
             f"(resolution {st['cpu_resolution_percent']} %)", t("steady_cpu")),
            ("steady state /healthz", f"p50 {st['healthz']['p50_ms']} ms, max {st['healthz']['max_ms']} ms", ""),
        ]
    if fl := results.get("flood"):
        rows += [
            ("flood of invalid datagrams", f"{fl['rate_per_s']}/s sent for 10 s, {fl['rejected_by_daemon']} read and "
             "rejected", t("flood_rate")),
            ("  RSS before / peak / after", f"{fl['rss_before_mib']} / {fl['rss_peak_mib']} / {fl['rss_after_mib']} MiB",
             f"{t('flood_rss_rise')} rise"),
            ("  /healthz during flood", f"p50 {fl['healthz']['p50_ms']} ms, p99 {fl['healthz']['p99_ms']} ms, "
             f"max {fl['healthz']['max_ms']} ms, {fl['healthz']['unanswered']} unanswered",
             t("flood_healthz_unanswered")),
        ]
    if sh := results.get("self_heal"):
        rows.append(("tunnel deleted → route back", f"p50 {sh['p50_ms']} ms, max {sh['max_ms']} ms (n={sh['n']})",
                     f"{t('self_heal_max')} (max)"))
    if sg := results.get("sigterm"):
        rows.append(("SIGTERM → exit", f"{sg['exit_ms']} ms (code {sg['exit_code']})",
                     f"{t('sigterm_exit')}, code {t('sigterm_code')}"))
    width = max(len(r[0]) for r in rows)
    lines = [f"{'measure':<{width}}  {'result':<60}  target", "-" * (width + 72)]
    lines += [f"{a:<{width}}  {b:<60}  {c}" for a, b, c in rows]
    return "\n".join(lines)


async def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description="tunnel-controller benchmark (run it in the sandbox)")
    parser.add_argument("--only", choices=("thousand",),
                        help="run one part and print its figures (results/tunnel_controller.json is left alone)")
    parser.add_argument("--trials", type=int, default=TRIALS, help=f"first-announcement trials (default {TRIALS}, at least 3)")
    parser.add_argument("--sources", type=int, default=SOURCES, help=f"announcing sources at once (default {SOURCES})")
    parser.add_argument("--steady-seconds", type=float, default=STEADY_SECONDS,
                        help=f"steady-state CPU window (default {STEADY_SECONDS})")
    targets.add_check_option(parser)
    args = parser.parse_args(argv)
    if args.trials < 3:
        parser.error("--trials: at least 3 (three peers announce in the steady state)")
    RESULTS.mkdir(exist_ok=True)
    results = {"kernel": os.uname().release, "sandbox": os.environ.get("SANDBOX_KERNEL", "host")}
    if args.only != "thousand":
        async with Namespaces(LOGS) as spaces:
            results.update(await first_announcement_and_more(spaces, args.trials, args.steady_seconds))
    async with Namespaces(LOGS) as spaces:
        results["thousand_sources"] = await thousand_sources(spaces, args.sources)
    verdicts = targets.evaluate("tunnel_controller", figures(results))
    results["targets"] = targets.as_json(verdicts)
    full = not args.only and (args.trials, args.sources, args.steady_seconds) == (TRIALS, SOURCES, STEADY_SECONDS)
    if full:  # a partial or short run leaves the full run's figures alone
        (RESULTS / "tunnel_controller.json").write_text(json.dumps(results, indent=2) + "\n")
        print(f"written: {RESULTS / 'tunnel_controller.json'}")
    else:
        print(json.dumps(results, indent=2))
    print(table(results))
    return targets.report(verdicts, args.check)


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1:])))
