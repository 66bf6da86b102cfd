"""Helpers for the tunnel-controller's kernel tests: start the daemon in a
namespace, announce from a seed peer, talk HTTP to the daemon, read its
metrics and logs, watch traffic."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import time
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address, ip_address


from announcement import ANNOUNCE_PORT
from bonding.plan import shoot_tunnel_name
from netlink_adapter.addresses import IFA_F_NODAD
from netlink_adapter.events import EventStream, RouteEvent
from netlink_adapter.ip6tnl import ip6tnl_state
from netlink_adapter.links import link_by_name, link_index, link_kind
from netlink_adapter.routes import RT_TABLE_MAIN, dump_routes
from tests.netns import nsutil
from tests.netns.nsutil import ns_socket
from tests.netns.topology import Peer

ROUTE_PROTOCOL = 119  # set for every daemon these tests start, not taken from the default
# These tests stop daemons to see what they leave; draining after SIGTERM is tested on its own.
DRAIN_SECONDS = 0
STARTUP_TIMEOUT = 60.0  # Python starts in ~2 s under UML; a loaded CI box can take much longer


# --- the daemon -------------------------------------------------------------


class Daemon:
    """``python -m tunnel_controller`` started in a namespace, with log parsing."""

    def __init__(self, processes: nsutil.ProcessGroup, ns: str, name: str = "tunnel-controller", **env):
        self.ns = ns
        settings = {"LOG_LEVEL": "debug", "ROUTE_PROTOCOL": ROUTE_PROTOCOL, "DRAIN_SECONDS": DRAIN_SECONDS, **env}
        self.proc = processes.start(
            ns, [nsutil.PYTHON, "-m", "tunnel_controller"], env=nsutil.daemon_env(**settings), name=name
        )

    @property
    def pid(self) -> int:
        return self.proc.popen.pid

    def events(self) -> list[dict]:
        """The JSON log lines so far (other lines are skipped)."""
        entries = []
        for line in self.proc.output().splitlines():
            try:
                entries.append(json.loads(line))
            except ValueError:
                continue
        return entries

    def logged(self, msg: str, **fields) -> list[dict]:
        return [e for e in self.events() if e.get("msg") == msg and all(e.get(k) == v for k, v in fields.items())]

    async def wait_logged(self, msg: str, timeout: float = STARTUP_TIMEOUT, **fields) -> dict:
        """The last log entry ``msg`` with ``fields``; fails at once if the daemon exits first."""
        deadline = time.monotonic() + timeout
        while True:
            if found := self.logged(msg, **fields):
                return found[-1]
            if self.proc.popen.poll() is not None:
                raise AssertionError(f"daemon exited ({self.proc.popen.returncode}):\n{self.proc.output()[-3000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"no log {msg!r} {fields} after {timeout:g} s:\n{self.proc.output()[-3000:]}")
            await asyncio.sleep(0.05)

    async def wait_listening(self) -> dict:
        return await self.wait_logged("listening for announcements")

    def stop(self, timeout: float = 10.0) -> int:
        return self.proc.stop(timeout=timeout)


# --- announcing ---------------------------------------------------------------


class Announcer:
    """A UDP6 socket in a seed peer's namespace, bound to its bond address."""

    def __init__(self, seed: Peer, shoot: Peer, source: IPv6Address | None = None):
        self.target = (str(shoot.address), ANNOUNCE_PORT)
        self.sock = ns_socket(seed.ns, socket.AF_INET6, socket.SOCK_DGRAM)
        self.sock.bind((str(source or seed.address), 0))

    def send(self, payload: bytes | str) -> None:
        self.sock.sendto(payload.encode() if isinstance(payload, str) else payload, self.target)

    def close(self) -> None:
        self.sock.close()


async def announce_every(announcer: Announcer, payload: bytes | str, interval: float, stop: asyncio.Event) -> None:
    """Announce like a path-controller does, until ``stop``."""
    while not stop.is_set():
        announcer.send(payload)
        try:
            await asyncio.wait_for(stop.wait(), interval)
        except asyncio.TimeoutError:
            pass


# --- HTTP and metrics -----------------------------------------------------------


async def http_get(ns: str, path: str, port: int = 8080, timeout: float = 10.0) -> tuple[int, str]:
    sock = ns_socket(ns, socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    try:
        async with asyncio.timeout(timeout):
            await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
            reader, writer = await asyncio.open_connection(sock=sock)
            writer.write(f"GET {path} HTTP/1.0\r\nHost: x\r\n\r\n".encode())
            await writer.drain()
            data = await reader.read()
            writer.close()
    except BaseException:
        sock.close()
        raise
    head, _, body = data.decode().partition("\r\n\r\n")
    return int(head.split()[1]), body


async def metrics(ns: str, port: int = 8080) -> str:
    """The body of /metrics; read values with ``metric``."""
    status, body = await http_get(ns, "/metrics", port)
    assert status == 200
    return body


metric = nsutil.metric_value  # an unknown name or label fails the test


# --- kernel state -----------------------------------------------------------------


@dataclass(frozen=True)
class Tunnel:
    name: str
    index: int
    kind: str
    local: IPv6Address | None
    remote: IPv6Address | None
    proto: int | None
    encap_limit: int | None
    flags: int
    up: bool


async def tunnels(ipr) -> dict[str, Tunnel]:
    """Every ``bond0ip6tnl*`` device, attributes read back through netlink."""
    found = {}
    async for link in await ipr.link("dump"):
        name = link.get("IFLA_IFNAME")
        if not name or not name.startswith("bond0ip6tnl"):
            continue
        state = ip6tnl_state(link)
        found[name] = Tunnel(
            name, state.index, link_kind(link), state.local, state.remote, state.proto, state.encap_limit,
            state.flags, state.up,
        )
    return found


@dataclass(frozen=True)
class Route:
    dst: str
    device: str | None
    proto: int


async def host_routes(ipr) -> dict[str, Route]:
    """Main-table /32 and /128 routes through a ``bond0ip6tnl*`` device, by destination."""
    names = {t.index: t.name for t in (await tunnels(ipr)).values()}
    return {
        str(route.dst): Route(str(route.dst), names[route.oif], route.proto)
        for route in await dump_routes(ipr, RT_TABLE_MAIN)  # cached exceptions (PMTU) left out
        if route.oif in names and route.is_host
    }


def tunnel_name(seed: Peer) -> str:
    return shoot_tunnel_name(seed.address)


async def kernel_picture(ipr) -> tuple:
    """Everything the daemon could have changed: links (name, kind, index) and all routes."""
    links = sorted(
        [
            (link.get("IFLA_IFNAME"), link_kind(link), link["index"])
            async for link in await ipr.link("dump")
        ]
    )
    return links, sorted(await dump_routes(ipr, table=None), key=str)


# --- traffic --------------------------------------------------------------------


async def add_host_address(ipr, address: str) -> None:
    """``address`` on lo (a pod IP on the seed side, a node/pod address on the shoot side)."""
    ip = ip_address(address)
    await ipr.addr("add", index=1, address=address, prefixlen=32 if ip.version == 4 else 128)


async def route_via(ipr, dst: str, device: str) -> None:
    index = await link_index(ipr, device)
    assert index is not None, f"no {device}"
    await ipr.route("replace", dst=dst, oif=index)


def ping_once(ns: str, dst: str, src: str | None = None, timeout: float = 1.0) -> bool:
    argv = ["ping", "-n", "-c1", f"-W{timeout:g}", dst] + (["-I", src] if src else [])
    return nsutil.run_in(ns, argv, check=False).returncode == 0


def is_v4(address: str) -> bool:
    return isinstance(ip_address(address), IPv4Address)


def run(ns: str, *argv: str) -> subprocess.CompletedProcess:
    return nsutil.run_in(ns, list(argv), check=False)


# --- crafted datagrams ------------------------------------------------------------


class RawSender:
    """Frames built with scapy, written to a peer's bond0 through a packet socket:
    any source address can be claimed (spoofing), any payload sent."""

    def __init__(self, ns: str, src_mac: str, dst_mac: str):
        self.src_mac, self.dst_mac = src_mac, dst_mac
        self.sock = ns_socket(ns, socket.AF_PACKET, socket.SOCK_RAW)
        self.sock.bind(("bond0", 0))

    @classmethod
    async def between(cls, sender_ns: str, sender_ipr, receiver_ipr) -> RawSender:
        async def mac(ipr) -> str:
            return (await link_by_name(ipr, "bond0")).get("IFLA_ADDRESS")

        return cls(sender_ns, await mac(sender_ipr), await mac(receiver_ipr))

    def udp(self, src: str, dst: str, payload: bytes, dport: int = ANNOUNCE_PORT) -> None:
        from scapy.layers.inet import UDP
        from scapy.layers.inet6 import IPv6
        from scapy.layers.l2 import Ether

        frame = Ether(src=self.src_mac, dst=self.dst_mac) / IPv6(src=src, dst=dst) / UDP(sport=40000, dport=dport)
        self.sock.send(bytes(frame / payload))

    def close(self) -> None:
        self.sock.close()


async def add_bond_addresses(ipr, addresses) -> None:
    """Extra addresses on a peer's bond0 (more senders without more namespaces)."""
    bond = await link_index(ipr, "bond0")
    for address in addresses:
        await ipr.addr("add", index=bond, address=str(address), prefixlen=128, flags=IFA_F_NODAD)


def rss_kib(pid: int) -> int:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


class RouteEvents:
    """Route additions and removals seen in a namespace, in order: (event, destination)."""

    def __init__(self, ns: str):
        self.stream = EventStream(links=False, netns=ns)
        self.seen: list[tuple[str, str]] = []
        self._task: asyncio.Task | None = None

    async def start(self) -> RouteEvents:
        await self.stream.start()
        self._task = asyncio.create_task(self._collect())
        return self

    async def _collect(self) -> None:
        async for event in self.stream:
            if isinstance(event, RouteEvent):
                self.seen.append(("RTM_DELROUTE" if event.deleted else "RTM_NEWROUTE", str(event.route.dst)))

    def position(self, event: str, dst: str) -> int:
        return self.seen.index((event, dst))

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self.stream.close()
