"""The tunnel-controller's only sockets: the UDP6 announcement listener and the
OpenVPN management connections the watchdog uses."""

from __future__ import annotations

import asyncio
import socket
from ipaddress import IPv6Address

import asyncio_dgram

# A burst of announcements (many kube-apiservers, or a restart of all of
# them) must not be dropped by the kernel before we read it; SO_RCVBUFFORCE
# (needs CAP_NET_ADMIN, which we have) goes beyond net.core.rmem_max.
RECEIVE_BUFFER = 4 << 20
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)  # Linux; Python does not export it
MANAGEMENT_TIMEOUT = 1.0
SIGHUP_COMMAND = b"signal SIGHUP\n"


async def bind_announcements(address: IPv6Address, port: int) -> asyncio_dgram.DatagramServer:
    """A UDP6 socket on ``[address]:port``; OSError (EADDRNOTAVAIL while the address is
    tentative or missing) is the caller's to retry."""
    sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    try:
        try:
            sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, RECEIVE_BUFFER)
        except OSError:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
        sock.bind((str(address), port))
        sock.setblocking(False)
        return await asyncio_dgram.from_socket(sock)
    except BaseException:
        sock.close()
        raise


async def open_sender(address: IPv6Address) -> asyncio_dgram.DatagramServer:
    """A UDP6 socket bound to ``address`` (the bond address: what receivers check)."""
    return await asyncio_dgram.bind((str(address), 0))


async def send_management_command(host: str, port: int, command: bytes = SIGHUP_COMMAND) -> None:
    """Write ``command`` to an OpenVPN management interface and hang up (as vpn2 does)."""
    async with asyncio.timeout(MANAGEMENT_TIMEOUT):
        _, writer = await asyncio.open_connection(host, port)
        try:
            writer.write(command)
            await writer.drain()
        finally:
            writer.close()
            try:
                await writer.wait_closed()
            except ConnectionError:
                pass
