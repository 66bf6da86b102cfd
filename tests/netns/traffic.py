"""Traffic through the VPN, measured from the test process with sockets
created inside the namespaces: a UDP echo stream (outage and gap figures)
and a long-lived TCP stream (does an open connection survive?)."""

from __future__ import annotations

import asyncio
import socket
import struct
import time
from dataclasses import dataclass, field

import asyncio_dgram

from tests.netns import nsutil

ECHO_PORT = 7007


class UdpEchoServer:
    """Echoes every datagram back from the address it was sent to.

    One socket per address: a wildcard socket would answer from the
    route's preferred source, which NAT on the way back would not match.
    """

    def __init__(self, ns: str, addresses, port: int = ECHO_PORT):
        self.ns = ns
        self.addresses = [str(a) for a in addresses]
        self.port = port
        self.streams = []
        self.tasks: list[asyncio.Task] = []

    async def start(self) -> UdpEchoServer:
        for address in self.addresses:
            family = socket.AF_INET6 if ":" in address else socket.AF_INET
            sock = nsutil.ns_socket(self.ns, family, socket.SOCK_DGRAM)
            sock.bind((address, self.port))
            sock.setblocking(False)
            stream = await asyncio_dgram.from_socket(sock)
            self.streams.append(stream)
            self.tasks.append(asyncio.create_task(self._echo(stream)))
        return self

    @staticmethod
    async def _echo(stream) -> None:
        while True:
            try:
                data, address = await stream.recv()
                await stream.send(data, address)
            except OSError:
                continue

    def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        for stream in self.streams:
            stream.close()


@dataclass
class UdpStream:
    """Sends a numbered datagram every ``interval`` and notes when each answer comes back."""

    ns: str
    target: str
    interval: float = 0.01
    port: int = ECHO_PORT
    sent: dict[int, float] = field(default_factory=dict)
    answered: dict[int, float] = field(default_factory=dict)

    async def start(self) -> UdpStream:
        family = socket.AF_INET6 if ":" in self.target else socket.AF_INET
        sock = nsutil.ns_socket(self.ns, family, socket.SOCK_DGRAM)
        sock.setblocking(False)
        self.stream = await asyncio_dgram.from_socket(sock)
        self.tasks = [asyncio.create_task(self._send()), asyncio.create_task(self._receive())]
        return self

    async def _send(self) -> None:
        seq = 0
        while True:
            self.sent[seq] = time.monotonic()
            try:
                await self.stream.send(struct.pack("!Q", seq) + b"x" * 56, (self.target, self.port))
            except OSError:
                pass
            seq += 1
            await asyncio.sleep(self.interval)

    async def _receive(self) -> None:
        while True:
            try:
                data, _ = await self.stream.recv()
            except OSError:
                continue
            if len(data) >= 8:
                self.answered.setdefault(struct.unpack_from("!Q", data)[0], time.monotonic())

    def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        self.stream.close()

    def recovery_after(self, t0: float) -> float | None:
        """Seconds from ``t0`` until the first answer to a datagram sent after ``t0``."""
        times = [self.answered[s] for s, sent in self.sent.items() if sent >= t0 and s in self.answered]
        return min(times) - t0 if times else None

    def longest_gap(self, start: float, end: float) -> float:
        """Longest time without any answer between ``start`` and ``end``."""
        arrivals = sorted(t for t in self.answered.values() if start <= t <= end)
        points = [start, *arrivals, end]
        return max(b - a for a, b in zip(points, points[1:]))

    def outages(self, start: float, end: float) -> list[tuple[float, float]]:
        """(when, seconds) of each run of unanswered datagrams sent between ``start`` and
        ``end``: from the first lost one's send time to the send time of the next one
        answered (or ``end``). Unlike ``longest_gap`` it does not count time the sender
        itself did not run (a busy test process) as an outage."""
        found = []
        lost_since = None
        for seq in sorted(s for s, t in self.sent.items() if start <= t <= end):
            sent = self.sent[seq]
            if seq not in self.answered:
                lost_since = sent if lost_since is None else lost_since
            elif lost_since is not None:
                found.append((lost_since, sent - lost_since))
                lost_since = None
        if lost_since is not None:
            found.append((lost_since, end - lost_since))
        return found

    def longest_outage(self, start: float, end: float) -> float:
        return max((seconds for _, seconds in self.outages(start, end)), default=0.0)

    def loss(self, start: float, end: float) -> tuple[int, int]:
        """(unanswered, sent) among datagrams sent between ``start`` and ``end``."""
        window = [s for s, t in self.sent.items() if start <= t <= end]
        return sum(1 for s in window if s not in self.answered), len(window)

    async def wait_flowing(self, timeout: float = 30.0) -> None:
        async def flowing():
            now = time.monotonic()
            return any(t > now - 0.5 for t in self.answered.values())

        await nsutil.wait_for(flowing, timeout=timeout, message=f"answers from {self.target}")


class TcpEchoServer:
    def __init__(self, ns: str, port: int = ECHO_PORT):
        self.ns, self.port = ns, port
        self.servers = []
        self.writers: set = set()

    async def start(self) -> TcpEchoServer:
        for family, any_address in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
            sock = nsutil.ns_socket(self.ns, family, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind((any_address, self.port))
            self.servers.append(await asyncio.start_server(self._handle, sock=sock))
        return self

    async def _handle(self, reader, writer) -> None:
        self.writers.add(writer)
        try:
            await self.echo(reader, writer)
        except ConnectionError:
            pass
        finally:
            self.writers.discard(writer)
            writer.close()

    async def echo(self, reader, writer) -> None:
        """Echo one connection until it ends."""
        while data := await reader.read(4096):
            writer.write(data)
            await writer.drain()

    async def aclose(self) -> None:
        for server in self.servers:
            server.close()
        for writer in list(self.writers):
            writer.close()  # ends the handlers' reads
        for server in self.servers:
            await server.wait_closed()


class TcpStream:
    """One TCP connection exchanging a numbered line every ``interval``."""

    def __init__(self, ns: str, target: str, port: int = ECHO_PORT, interval: float = 0.05):
        self.ns, self.target, self.port, self.interval = ns, target, port, interval
        self.echoed: list[float] = []
        self.error: BaseException | None = None

    async def start(self) -> TcpStream:
        family = socket.AF_INET6 if ":" in self.target else socket.AF_INET
        sock = nsutil.ns_socket(self.ns, family, socket.SOCK_STREAM)
        sock.setblocking(False)
        await asyncio.wait_for(asyncio.get_running_loop().sock_connect(sock, (self.target, self.port)), 10)
        self.reader, self.writer = await asyncio.open_connection(sock=sock)
        self.task = asyncio.create_task(self._run())
        return self

    async def _run(self) -> None:
        seq = 0
        try:
            while True:
                line = f"{seq:08d}\n".encode()
                self.writer.write(line)
                await self.writer.drain()
                echoed = await self.reader.readline()
                if echoed != line:
                    raise ConnectionError(f"stream broken: sent {line!r}, got {echoed!r}")
                self.echoed.append(time.monotonic())
                seq += 1
                await asyncio.sleep(self.interval)
        except (ConnectionError, OSError, asyncio.IncompleteReadError) as exc:
            self.error = exc

    def close(self) -> None:
        self.task.cancel()
        self.writer.close()
