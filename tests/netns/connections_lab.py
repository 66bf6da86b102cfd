"""TCP connections through the HA topology that know which vpn-shoot carried them.

The echo server in the shoot network sees the address the vpn-shoot
masqueraded a connection to (10.250.1.<j+1>) and echoes it back with each line.
Used by tests/netns/test_connections.py and benchmarks/connections.py.
"""

from __future__ import annotations

import asyncio
import socket
import time

from tests.netns import nsutil
from tests.netns.ha_topology import SHOOT_POD
from tests.netns.traffic import TcpEchoServer

PORT = 7100
SHOOT_OF = {"10.250.1.1": 0, "10.250.1.2": 1}


class PeerEcho(TcpEchoServer):
    """Echoes each line prefixed with the address the connection came from."""

    async def echo(self, reader, writer) -> None:
        peer = writer.get_extra_info("peername")[0]
        while line := await reader.readline():
            writer.write(f"{peer} ".encode() + line)
            await writer.drain()


async def _open(ns: str, timeout: float):
    sock = nsutil.ns_socket(ns, socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    try:
        await asyncio.wait_for(asyncio.get_running_loop().sock_connect(sock, (str(SHOOT_POD), PORT)), timeout)
    except BaseException:
        sock.close()
        raise
    return await asyncio.open_connection(sock=sock)


async def _exchange(reader, writer, line: bytes) -> int:
    writer.write(line)
    await writer.drain()
    peer, _, echoed = (await reader.readline()).partition(b" ")
    if echoed != line:
        raise ConnectionError(f"stream broken: sent {line!r}, got {echoed!r}")
    return SHOOT_OF[peer.decode()]


async def connect_once(ns: str, timeout: float = 5.0) -> int:
    """Open a connection, exchange a line, close it: the vpn-shoot that carried it."""
    reader, writer = await _open(ns, timeout)
    try:
        return await asyncio.wait_for(_exchange(reader, writer, b"hello\n"), timeout)
    finally:
        writer.close()


class ViaStream:
    """A long-lived TCP connection exchanging a line every ``interval``; notes the vpn-shoot of each echo."""

    def __init__(self, ns: str, interval: float = 0.1):
        self.ns, self.interval = ns, interval
        self.echoes: list[tuple[float, int]] = []
        self.error: BaseException | None = None
        self.error_at: float | None = None

    async def start(self) -> ViaStream:
        self.reader, self.writer = await _open(self.ns, 10.0)
        self.via = await _exchange(self.reader, self.writer, b"first\n")
        self.task = asyncio.create_task(self._run())
        return self

    async def _run(self) -> None:
        seq = 0
        try:
            while True:
                via = await _exchange(self.reader, self.writer, f"{seq:08d}\n".encode())
                self.echoes.append((time.monotonic(), via))
                seq += 1
                await asyncio.sleep(self.interval)
        except (ConnectionError, OSError, asyncio.IncompleteReadError) as exc:
            self.error, self.error_at = exc, time.monotonic()

    def vias_since(self, since: float) -> set[int]:
        return {via for t, via in self.echoes if t >= since}

    def echoes_since(self, since: float) -> int:
        return sum(1 for t, _ in self.echoes if t >= since)

    def close(self) -> None:
        self.task.cancel()
        self.writer.close()


async def connect_steadily(topo, rate: float, results: list) -> None:
    """New connections from every kube-apiserver in turn, ``rate`` per second in all, until cancelled."""
    period = 1.0 / rate
    loop = asyncio.get_running_loop()
    pending = set()

    async def one(api) -> None:
        started = time.monotonic()
        try:
            results.append((started, api.name, await connect_once(api.ns, timeout=5.0)))
        except (OSError, ConnectionError, asyncio.TimeoutError, asyncio.IncompleteReadError) as exc:
            results.append((started, api.name, exc))

    try:
        n = 0
        next_at = loop.time()
        while True:
            task = asyncio.create_task(one(topo.apiservers[n % len(topo.apiservers)]))
            pending.add(task)
            task.add_done_callback(pending.discard)
            n += 1
            next_at += period
            await asyncio.sleep(max(0.0, next_at - loop.time()))
    finally:
        if pending:
            await asyncio.wait(pending, timeout=10)
