"""The path-controller's sockets: one ICMPv6 echo socket for every target, and
the UDP socket announcements leave from.

Pinger: one unprivileged ICMPv6 "ping socket" (needs the process's group in
``net.ipv4.ping_group_range``) or, failing that, a raw ICMPv6 socket when the
process has CAP_NET_RAW. One reader task matches replies to probes by
sequence number, payload and source address (the kernel rewrites the echo
identifier of ping sockets); only echo replies count. A reply that comes
after its probe was given up is still reported: a slow path is alive.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from ipaddress import IPv6Address

import asyncio_dgram

from daemonkit.lifecycle import StartupError

LOG = logging.getLogger(__name__)

ECHO_REQUEST = 128
ECHO_REPLY = 129
ICMP6_FILTER = 1  # linux/icmpv6.h ICMPV6_FILTER
PAYLOAD_BYTES = 16
# How long a probe stays matchable; later replies are dropped.
MATCH_WINDOW = 5.0


async def send_datagram(stream, data: bytes, address: tuple[str, int]) -> None:
    """Send with asyncio-dgram and raise the kernel's error for *this* datagram.

    asyncio reports a failed sendto to the protocol, and asyncio-dgram raises
    it on the next call; collecting it right after the send (sendto runs
    synchronously) ties each error to its own datagram.
    """
    _drain_errors(stream)
    await stream.send(data, address)
    errors = _drain_errors(stream)
    if errors:
        raise errors[0]


def _drain_errors(stream) -> list[OSError]:
    errors = []
    while True:
        try:
            stream.exception  # raises the oldest pending error, if any
        except OSError as exc:
            errors.append(exc)
        else:
            return errors


class PingSocketUnavailable(StartupError):
    """Neither a ping socket nor a raw socket can be opened; the message says why."""


def open_icmp_socket() -> tuple[socket.socket, bool]:
    """(socket, is_raw): a ping socket, else a raw socket, else PingSocketUnavailable."""
    try:
        return socket.socket(socket.AF_INET6, socket.SOCK_DGRAM, socket.IPPROTO_ICMPV6), False
    except PermissionError:
        pass
    try:
        sock = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
    except PermissionError:
        gid = os.getgid()
        try:
            with open("/proc/sys/net/ipv4/ping_group_range") as f:
                allowed = " ".join(f.read().split())
        except OSError:
            allowed = "unknown"
        raise PingSocketUnavailable(
            f"cannot open an ICMPv6 socket: group {gid} is outside net.ipv4.ping_group_range ({allowed}) "
            f"and the process lacks CAP_NET_RAW; set the pod sysctl net.ipv4.ping_group_range to include {gid} "
            f'(e.g. "0 2147483647") or add the NET_RAW capability'
        ) from None
    # Only echo replies reach a raw socket: block every type but 129.
    blocked = [0xFFFFFFFF] * 8
    blocked[ECHO_REPLY >> 5] &= ~(1 << (ECHO_REPLY & 31))
    sock.setsockopt(socket.IPPROTO_ICMPV6, ICMP6_FILTER, struct.pack("8I", *blocked))
    return sock, True


@dataclass
class _Probe:
    target: IPv6Address
    payload: bytes
    sent_at: float


class Pinger:
    """Send echo requests; ``on_answer(target, rtt, now)`` is called for each matching reply."""

    def __init__(
        self,
        on_answer: Callable[[IPv6Address, float, float], None],
        on_lost: Callable[[IPv6Address], None] = lambda target: None,
        clock=time.monotonic,
    ):
        self.on_answer = on_answer
        self.on_lost = on_lost
        self.clock = clock
        self.raw = False
        self._sock: socket.socket | None = None
        self._stream = None
        self._ident = int.from_bytes(os.urandom(2), "big")
        self._seq = int.from_bytes(os.urandom(2), "big")
        self._outstanding: dict[int, _Probe] = {}
        self.foreign_replies = 0

    async def open(self) -> None:
        self._sock, self.raw = open_icmp_socket()
        self._sock.setblocking(False)
        if not self.raw:
            self._stream = await asyncio_dgram.from_socket(self._sock)
        LOG.info("icmp socket open", extra={"kind": "raw" if self.raw else "ping"})

    def close(self) -> None:
        if self._stream is not None:
            self._stream.close()
        elif self._sock is not None:
            self._sock.close()

    def _next_seq(self) -> int:
        for _ in range(0x10000):
            self._seq = (self._seq + 1) & 0xFFFF
            if self._seq not in self._outstanding:
                return self._seq
        raise RuntimeError("all 65536 sequence numbers in flight")

    def _prune(self, now: float) -> None:
        """Give up on probes older than MATCH_WINDOW (dicts keep send order)."""
        while self._outstanding:
            seq, probe = next(iter(self._outstanding.items()))
            if now - probe.sent_at <= MATCH_WINDOW:
                return
            del self._outstanding[seq]
            self.on_lost(probe.target)

    async def send(self, target: IPv6Address) -> None:
        """Send one echo request; raises OSError if the kernel refuses it."""
        now = self.clock()
        self._prune(now)
        seq = self._next_seq()
        payload = os.urandom(PAYLOAD_BYTES)
        packet = struct.pack("!BBHHH", ECHO_REQUEST, 0, 0, self._ident, seq) + payload
        self._outstanding[seq] = _Probe(target, payload, now)
        address = (str(target), 0)
        if self._stream is not None:
            await send_datagram(self._stream, packet, address)
        else:
            await asyncio.get_running_loop().sock_sendto(self._sock, packet, address)

    async def run(self) -> None:
        """Read replies until cancelled."""
        loop = asyncio.get_running_loop()
        while True:
            try:
                if self._stream is not None:
                    data, address = await self._stream.recv()
                else:
                    data, address = await loop.sock_recvfrom(self._sock, 2048)
            except OSError as exc:  # an ICMP error queued on the socket; not a reply
                LOG.debug("icmp socket error", extra={"error": str(exc)})
                continue
            self._handle(data, address[0])

    def _handle(self, data: bytes, source: str) -> None:
        if len(data) < 8 or data[0] != ECHO_REPLY or data[1] != 0:
            return
        ident, seq = struct.unpack_from("!HH", data, 4)
        if self.raw and ident != self._ident:
            self.foreign_replies += 1  # another process's ping on a raw socket
            return
        probe = self._outstanding.get(seq)
        if probe is None or data[8:] != probe.payload or IPv6Address(source.split("%")[0]) != probe.target:
            self.foreign_replies += 1
            return
        del self._outstanding[seq]
        now = self.clock()
        self.on_answer(probe.target, now - probe.sent_at, now)


class Announcer:
    """A UDP6 socket bound to the bond address, so announcements carry it as source."""

    def __init__(self):
        self._stream = None
        self.source: IPv6Address | None = None

    async def open(self, source: IPv6Address) -> None:
        self.close()
        self._stream = await asyncio_dgram.bind((str(source), 0))
        self.source = source

    async def send(self, data: bytes, target: IPv6Address, port: int) -> None:
        if self._stream is None:
            raise OSError(errno.ENOTCONN, "announcement socket not open (no bond address yet)")
        await send_datagram(self._stream, data, (str(target), port))

    def close(self) -> None:
        if self._stream is not None:
            self._stream.close()
            self._stream = None
