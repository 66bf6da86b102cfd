"""A kube-apiserver namespace with two paths to the shoot network, for the connection pinning.

    seed ── bond0-ip6tnl0 ── shoot0 ──d── dst  10.99.0.1, fd99::1 (the shoot network)
         ── bond0-ip6tnl1 ── shoot1 ──d──┘

``path="ip6tnl"``: real ip6tnl devices (mode any, encaplimit none) over a
veth IPv6 underlay, as the path-controller has them (UML kernel).
``path="veth"``: the path device is a veth with static neighbours (the host
kernel has no ip6tnl; pinning does not depend on the device type).
Each vpn-shoot masquerades into the shoot network, as vpn-shoots do: the
echo server sees which one carried a connection, and a connection moved to
the other one is reset by the far side. The main table's routes are the
path-controller's (protocol ``PROTO``); the test switches them.
"""

from __future__ import annotations

import asyncio
import shlex
import socket
import time
from collections.abc import Callable
from ipaddress import IPv6Address, ip_address, ip_network

from netlink_adapter.ip6tnl import ensure_ip6tnl
from netlink_adapter.links import link_index
from netlink_adapter.routes import replace_route
from tests.netns import nsutil
from tests.netns.traffic import TcpEchoServer

PROTO = 118
PORT = 7007
DST4, DST6 = "10.99.0.1", "fd99::1"
NET4, NET6 = ip_network("10.99.0.0/16"), ip_network("fd99::/64")
POD4, POD6 = "10.250.0.1", "fd50::1"
# vpn2's overlap mode: the seed routes the mapped /8; envoy's (gid 31415) NAT OUTPUT maps the real
# shoot network into it; the vpn-shoot maps it back.
MAPPED4, MAPPED_DST4, ENVOY_GID = ip_network("244.0.0.0/8"), "244.99.0.1", 31415


def via_of(peer: str) -> int:
    """The vpn-shoot that masqueraded a connection: 172.16.j.1 / fd16:j::1 → j."""
    address = ip_address(peer.removeprefix("::ffff:"))
    return int(str(address).split(".")[2]) if address.version == 4 else int(address.exploded.split(":")[1], 16)


class PinningLab:
    def __init__(
        self, make_netns: Callable[[str], str], ipr_factory, path: str = "ip6tnl", netmap: bool = False,
        iptables: str = "iptables-legacy",
    ):  # fmt: skip
        """``netmap``: vpn2's overlap mode, its seed rules written with ``iptables`` (-legacy or -nft)."""
        self.make_netns, self.ipr_factory, self.path, self.netmap = make_netns, ipr_factory, path, netmap
        self.iptables = iptables
        self.routed = (MAPPED4 if netmap else NET4, NET6)
        self.underlay: dict[int, tuple[IPv6Address, IPv6Address]] = {}
        self.handles: dict[str, object] = {}

    async def ipr_of(self, ns: str):
        """One AsyncIPRoute per namespace (opening one in another namespace costs a fork)."""
        if ns not in self.handles:
            self.handles[ns] = await self.ipr_factory(ns)
        return self.handles[ns]

    async def build(self) -> PinningLab:
        self.seed, self.dst = self.make_netns("pseed"), self.make_netns("pdst")
        self.shoots = [self.make_netns(f"pshoot{j}") for j in range(2)]
        self.ipr = await self.ipr_of(self.seed)
        dst = await self.ipr_of(self.dst)
        await dst.addr("add", index=1, address=DST4, prefixlen=32)
        await dst.addr("add", index=1, address=DST6, prefixlen=128)
        # The pod's own interface with its IPs (a veth: the host kernel has no dummy).
        eth0 = await self._device(self.ipr, "eth0", kind="veth", peer={"ifname": "eth0-peer"})
        await self.ipr.addr("add", index=eth0, address=POD4, prefixlen=32)
        await self.ipr.addr("add", index=eth0, address=POD6, prefixlen=128)
        if self.netmap:
            await self.ipr.route("add", dst="10.0.0.0/8", oif=eth0)  # the pod network's default
        for j, ns in enumerate(self.shoots):
            await self._shoot(j, ns, dst)
        if self.netmap:
            self._vpn2_seed_rules()
        await self.main_table_to(0)
        return self

    async def _device(self, ipr, name: str, **spec) -> int:
        await ipr.link("add", ifname=name, **spec)
        index = await link_index(ipr, name)
        await ipr.link("set", index=index, state="up")
        return index

    async def _veth(self, ns_a: str, name_a: str, ns_b: str, name_b: str) -> tuple[int, int]:
        a, b = await self.ipr_of(ns_a), await self.ipr_of(ns_b)
        await a.link("add", ifname=name_a, kind="veth", peer={"ifname": name_b, "net_ns_fd": ns_b})
        ia, ib = await link_index(a, name_a), await link_index(b, name_b)
        await a.link("set", index=ia, state="up")
        await b.link("set", index=ib, state="up")
        return ia, ib

    async def _shoot(self, j: int, ns: str, dst) -> None:
        shoot = await self.ipr_of(ns)
        # Forwarding, and the masquerade into the shoot network that vpn-shoot does (nat POSTROUTING -o eth0).
        setup = [nsutil.sysctl_cmd({"net.ipv4.ip_forward": "1", "net.ipv6.conf.all.forwarding": "1"})]
        setup += [[tool, "-t", "nat", "-A", "POSTROUTING", "-o", "d", "-j", "MASQUERADE"]
                  for tool in ("iptables-legacy", "ip6tables-legacy")]  # fmt: skip
        if self.netmap:
            setup.append(["iptables-legacy", "-t", "nat", "-A", "PREROUTING", "-i", "tnl", "-d", "244.99.0.0/16",
                          "-j", "NETMAP", "--to", "10.99.0.0/16"])  # fmt: skip
        nsutil.run_in(ns, ["sh", "-c", " && ".join(map(shlex.join, setup))])
        d, s = await self._veth(ns, "d", self.dst, f"s{j}")
        await shoot.addr("add", index=d, address=f"172.16.{j}.1", prefixlen=24)
        await shoot.addr("add", index=d, address=f"fd16:{j}::1", prefixlen=64)
        await dst.addr("add", index=s, address=f"172.16.{j}.2", prefixlen=24)
        await dst.addr("add", index=s, address=f"fd16:{j}::2", prefixlen=64)
        await shoot.route("add", dst=str(NET4), gateway=f"172.16.{j}.2")
        await shoot.route("add", dst=str(NET6), gateway=f"fd16:{j}::2")
        name = f"bond0-ip6tnl{j}"
        if self.path == "ip6tnl":
            seed_end, shoot_end = await self._veth(self.seed, f"u{j}", ns, "u")
            local, remote = IPv6Address(f"fc00:{j}::1"), IPv6Address(f"fc00:{j}::2")
            await self.ipr.addr("add", index=seed_end, address=str(local), prefixlen=64)
            await shoot.addr("add", index=shoot_end, address=str(remote), prefixlen=64)
            self.underlay[j] = (local, remote)
            await ensure_ip6tnl(self.ipr, name, local, remote)
            tnl, _ = await ensure_ip6tnl(shoot, "tnl", remote, local)
        else:  # no addresses on the path, as on the tunnels; static neighbours instead of ARP/ND
            seed_end, tnl = await self._veth(self.seed, name, ns, "tnl")
            for ipr, index, other, other_index, neighbours in ((self.ipr, seed_end, shoot, tnl, (DST4, DST6)),
                                                               (shoot, tnl, self.ipr, seed_end, (POD4, POD6))):
                (link,) = await other.link("get", index=other_index)
                for neighbour in neighbours:
                    await ipr.neigh("replace", dst=neighbour, lladdr=link.get("IFLA_ADDRESS"), ifindex=index,
                                    state="permanent")  # fmt: skip
        await shoot.route("add", dst=f"{POD4}/32", oif=tnl)
        await shoot.route("add", dst=f"{POD6}/128", oif=tnl)
        if self.netmap:
            await shoot.route("add", dst="241.0.0.0/8", oif=tnl)

    def _vpn2_seed_rules(self) -> None:
        """vpn2's seed-side rules in overlap mode (vpn2-behavior §4.4)."""
        v4, v6 = self.iptables, self.iptables.replace("iptables", "ip6tables")
        commands = [
            [v4, "-t", "nat", "-A", "OUTPUT", "-m", "owner", "--gid-owner", str(ENVOY_GID),
             "-d", "10.99.0.0/16", "-j", "NETMAP", "--to", "244.99.0.0/16"],
            [v4, "-t", "nat", "-A", "PREROUTING", "-i", "bond0+", "-d", "241.0.0.0/8",
             "-j", "NETMAP", "--to", "10.250.0.0/16"],
            [v4, "-t", "nat", "-A", "POSTROUTING", "-o", "bond0+", "-s", "10.250.0.0/16",
             "-j", "NETMAP", "--to", "241.0.0.0/8"],
            [v6, "-A", "INPUT", "-i", "bond0+", "-p", "icmpv6", "-j", "ACCEPT"],
        ]  # fmt: skip
        for tool in (v4, v6):
            commands.append([tool, "-A", "INPUT", "-m", "state", "--state", "RELATED,ESTABLISHED", "-i", "bond0+",
                             "-j", "ACCEPT"])  # fmt: skip
            commands.append([tool, "-A", "INPUT", "-i", "bond0+", "-j", "DROP"])
        nsutil.run_in(self.seed, ["sh", "-c", " && ".join(map(shlex.join, commands))])

    async def tunnel(self, j: int) -> int:
        return await link_index(self.ipr, f"bond0-ip6tnl{j}")

    async def tunnels(self) -> dict[int, int]:
        return {j: await self.tunnel(j) for j in range(len(self.shoots))}

    async def main_table_to(self, j: int) -> None:
        """What the path-controller does on a switch: the shoot networks through vpn-shoot j."""
        for network in self.routed:
            await replace_route(self.ipr, network, await self.tunnel(j), proto=PROTO)

    async def switch(self, pinning, j: int) -> None:
        """A primary switch as the path-controller makes it, with ``pinning`` (a ConnectionPinning)."""
        await pinning.main_routes_through(None)
        await self.main_table_to(j)
        await pinning.new_connections_to(j)
        await pinning.main_routes_through(j)

    async def kill_and_wait_silent(self, j: int, streams) -> None:
        """``kill(j)``, then wait until its ``streams`` (PinnedStreams) have had no echo for 0.3 s."""
        await self.kill(j)

        async def silent() -> bool:
            return all(stream.echoes[-1][0] < time.monotonic() - 0.3 for stream in streams)

        await nsutil.wait_for(silent, timeout=5, message=f"vpn-shoot {j}'s streams to go silent")

    async def recreate_tunnel(self, j: int) -> None:
        """``bond0-ip6tnl<j>`` again, after someone deleted it (the path-controller recreates it)."""
        await ensure_ip6tnl(self.ipr, f"bond0-ip6tnl{j}", *self.underlay[j])

    async def kill(self, j: int) -> None:
        """vpn-shoot j is gone: its end of the path goes down, packets vanish without an answer."""
        shoot = await self.ipr_of(self.shoots[j])
        device = "u" if self.path == "ip6tnl" else "tnl"
        await shoot.link("set", index=await link_index(shoot, device), state="down")

    async def tx_packets(self, j: int) -> int:
        (link,) = await self.ipr.link("get", index=await self.tunnel(j))
        return link.get("IFLA_STATS64")["tx_packets"]


# --- traffic -------------------------------------------------------------------


class ViaEchoServer(TcpEchoServer):
    """In the shoot network: echoes TCP lines and UDP datagrams prefixed with the peer it saw."""

    def __init__(self, ns: str):
        super().__init__(ns, PORT)
        self.transports = []

    async def start(self) -> ViaEchoServer:
        await super().start()
        loop = asyncio.get_running_loop()
        for family, address in ((socket.AF_INET, DST4), (socket.AF_INET6, DST6)):
            udp = nsutil.ns_socket(self.ns, family, socket.SOCK_DGRAM)
            udp.bind((address, PORT))  # not the wildcard: answers must come from the address asked
            transport, _ = await loop.create_datagram_endpoint(lambda: _UdpEcho(), sock=udp)
            self.transports.append(transport)
        return self

    async def echo(self, reader, writer) -> None:
        peer = writer.get_extra_info("peername")[0]
        while line := await reader.readline():
            writer.write(f"{peer} ".encode() + line)
            await writer.drain()

    async def aclose(self) -> None:
        for transport in self.transports:
            transport.close()
        await super().aclose()


class _UdpEcho(asyncio.DatagramProtocol):
    def connection_made(self, transport):
        self.transport = transport

    def datagram_received(self, data, address):
        self.transport.sendto(f"{address[0]} ".encode() + data, address)


class PinnedStream:
    """A TCP connection from the seed exchanging a line every ``interval``; notes which vpn-shoot echoed."""

    def __init__(self, ns: str, target: str, interval: float = 0.05):
        self.ns, self.target, self.interval = ns, target, interval
        self.echoes: list[tuple[float, int]] = []  # (time, vpn-shoot)
        self.error: BaseException | None = None
        self.error_at: float | None = None

    async def start(self, timeout: float = 5.0) -> PinnedStream:
        family = socket.AF_INET6 if ":" in self.target else socket.AF_INET
        sock = nsutil.ns_socket(self.ns, family, socket.SOCK_STREAM)
        sock.setblocking(False)
        await asyncio.wait_for(asyncio.get_running_loop().sock_connect(sock, (self.target, PORT)), timeout)
        self.socket = sock
        self.reader, self.writer = await asyncio.open_connection(sock=sock)
        self.task = asyncio.create_task(self._run())
        await self.wait_echoes(1)
        return self

    async def _run(self) -> None:
        seq = 0
        try:
            while True:
                self.writer.write(f"{seq}\n".encode())
                await self.writer.drain()
                line = await self.reader.readline()
                if not line:
                    raise ConnectionError("closed by the far side")
                self.echoes.append((time.monotonic(), via_of(line.split()[0].decode())))
                seq += 1
                await asyncio.sleep(self.interval)
        except (ConnectionError, OSError, asyncio.IncompleteReadError) as exc:
            self.error, self.error_at = exc, time.monotonic()

    async def wait_echoes(self, count: int, timeout: float = 5.0) -> None:
        await nsutil.wait_for(
            lambda: len(self.echoes) >= count or self.error,
            timeout=timeout,
            message=f"{count} echoes from {self.target}",
        )
        if self.error:
            raise AssertionError(f"stream to {self.target} broke: {self.error!r}")

    @property
    def via(self) -> int:
        return self.echoes[0][1]

    def vias_since(self, since: float) -> set[int]:
        return {via for at, via in self.echoes if at >= since}

    def echoes_since(self, since: float) -> int:
        return sum(1 for at, _ in self.echoes if at >= since)

    def close(self) -> None:
        self.task.cancel()
        self.writer.close()


class UdpFlow:
    """A connected UDP socket in the seed; ``exchange`` sends one datagram and returns the echoing vpn-shoot."""

    def __init__(self, ns: str, target: str):
        family = socket.AF_INET6 if ":" in target else socket.AF_INET
        self.socket = nsutil.ns_socket(ns, family, socket.SOCK_DGRAM)
        self.socket.settimeout(2.0)
        self.socket.connect((target, PORT))

    async def exchange(self) -> int:
        def send_and_receive() -> int:
            self.socket.send(b"ping\n")
            return via_of(self.socket.recv(512).split()[0].decode())

        return await asyncio.to_thread(send_and_receive)

    def close(self) -> None:
        self.socket.close()


async def first_via(ns: str, target: str) -> int:
    """Open a connection, note which vpn-shoot carried it, close it."""
    stream = await PinnedStream(ns, target).start()
    stream.close()
    return stream.via


async def wait_error(streams, timeout: float) -> None:
    await nsutil.wait_for(lambda: all(s.error for s in streams), timeout=timeout, message="the streams to error")

