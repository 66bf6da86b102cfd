"""Runs the steering core (``core.ServerSteering``): one AF_PACKET socket per tap for the
beacons, the bond's state from netlink link events, the bond's primary written
through netlink. It decides nothing.

AF_PACKET needs CAP_NET_RAW; without it (or without the taps) ``start`` raises
SteeringUnavailable with the one line the daemon logs before it carries on
without steering (the kernel's behaviour, as vpn2).
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import socket
import struct
import time
from collections.abc import Callable
from ipaddress import IPv6Address

from bonding.plan import BOND_DEVICE
from daemonkit.effects import Log, Metric, apply_metric, write_log
from daemonkit.inbox import Inbox
from daemonkit.lifecycle import Heartbeats
from daemonkit.logs import RateLimiter
from netlink_adapter import AsyncIPRoute
from netlink_adapter.bond import set_primary
from netlink_adapter.errors import KERNEL_ERRORS
from netlink_adapter.events import EventStream, LinkEvent
from netlink_adapter.links import LinkFacts, dump_links, link_by_name, link_facts
from steering.beacon import ETHERTYPE, ROLE_BYTE, BadBeacon, Beacon, decode, encode, peers_only_filter
from steering.core import BeaconHeard, BondSeen, Event, SendBeacon, ServerSteering, SetPrimary, SteeringConfig, Tick
from steering.metrics import SteeringMetrics

LOG = logging.getLogger("steering")
SO_ATTACH_FILTER = 26  # socket.SO_ATTACH_FILTER where Python has it
READ_BATCH = 64  # frames read per wake-up of a socket, at most


def keep_peers_only(sock: socket.socket, config: SteeringConfig) -> str | None:
    """Let the kernel drop beacons of our own kind before they wake us (see
    ``peers_only_filter``); without the filter they are read and ignored by the core.
    None, or why the filter could not be attached."""
    peer = config.plan.shoot_client(0) if config.seed_side else config.plan.seed_client(1)
    instructions = peers_only_filter(peer.packed[ROLE_BYTE])
    program = ctypes.create_string_buffer(instructions, len(instructions))  # struct sock_fprog points at it
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER,
                        struct.pack("HL", len(instructions) // 8, ctypes.addressof(program)))
    except OSError as exc:
        return exc.strerror
    return None


class SteeringUnavailable(RuntimeError):
    """Steering cannot run here; the message is the one line an operator sees."""


def tap_name(server: int) -> str:
    return f"tap{server}"


class SteeringRunner:
    def __init__(
        self,
        config: SteeringConfig,
        ipr: AsyncIPRoute,
        metrics: SteeringMetrics,
        *,
        key: bytes | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_ms: Callable[[], int] = lambda: time.time_ns() // 1_000_000,
        on_beacon: Callable[[Beacon, float], None] = lambda beacon, now: None,
        on_move: Callable[[float], None] = lambda now: None,
        heartbeats: Heartbeats | None = None,
    ):
        self.config = config
        self.ipr = ipr
        self.metrics = metrics
        self.key = key
        self.clock = clock
        self.wall_ms = wall_ms
        self.on_beacon = on_beacon
        self.on_move = on_move  # the bond changed server (whoever moved it)
        self.heartbeats = heartbeats
        self.core = ServerSteering(config, clock())
        self.sockets: dict[int, socket.socket] = {}
        self.links: dict[str, LinkFacts] = {}
        self.bond_mac = b"\0" * 6
        self.last_timestamp: dict[tuple[IPv6Address, int], int] = {}
        self.log_limit = RateLimiter(interval=30.0, clock=clock)
        self.inbox: Inbox[Event] = Inbox()
        self._last_bond: BondSeen | None = None
        metrics.follow(lambda: self.clock() - self.core.moved_at, lambda: len(self.core.peers()),
                       lambda: self.core.alone() is not None)

    # --- start and stop --------------------------------------------------------

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        for server in range(self.config.servers):
            try:
                sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETHERTYPE))
            except PermissionError:
                self.close()
                raise SteeringUnavailable(
                    "server steering off: an AF_PACKET socket needs CAP_NET_RAW (add NET_RAW to the container's "
                    "capabilities); the bond is left to the kernel, as with vpn2"
                ) from None
            try:
                sock.bind((tap_name(server), ETHERTYPE))
            except OSError as exc:
                sock.close()
                self.close()
                raise SteeringUnavailable(f"server steering off: cannot listen on {tap_name(server)}: {exc.strerror}") from None
            sock.setblocking(False)
            self._peers_only(sock)
            self.sockets[server] = sock
            loop.add_reader(sock.fileno(), self._readable, server)
        try:
            for link in await dump_links(self.ipr):
                self.links[link.name] = link
        except KERNEL_ERRORS as exc:
            LOG.warning("cannot read links; the bond is known from its next change", extra={"error": str(exc)})
        self._bond_changed()
        LOG.info("server steering on", extra={"servers": self.config.servers, "me": str(self.config.me)})

    def _peers_only(self, sock: socket.socket) -> None:
        problem = keep_peers_only(sock, self.config)
        if problem is not None and self.log_limit.allow("filter") is not None:
            LOG.info("beacons of our own kind are read and ignored: no socket filter", extra={"error": problem})

    def tasks(self) -> dict:
        return {"steering": self._decision_loop(), "steering-links": self._link_loop()}

    def close(self) -> None:
        for sock in self.sockets.values():
            try:
                asyncio.get_running_loop().remove_reader(sock.fileno())
            except RuntimeError:
                pass
            sock.close()
        self.sockets.clear()

    def alone(self) -> str | None:
        return self.core.alone()

    # --- events in ---------------------------------------------------------------

    def post(self, event: Event) -> None:
        self.inbox.post(event)

    def _readable(self, server: int) -> None:
        sock = self.sockets.get(server)
        for _ in range(READ_BATCH):
            try:
                frame = sock.recv(2048)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # e.g. ENETDOWN while the tap loses its client
                LOG.debug("beacon socket error", extra={"server": server, "error": str(exc)})
                return
            self._received(server, frame)

    def _received(self, server: int, frame: bytes) -> None:
        now = self.clock()
        try:
            beacon = decode(frame, self.config.plan.network, key=self.key)
            self._check_sender(beacon, server)
        except BadBeacon as exc:
            self.metrics.beacons_rejected.labels(exc.reason).inc()
            if (suppressed := self.log_limit.allow(("beacon", exc.reason))) is not None:
                LOG.warning("beacon ignored", extra={"reason": exc.reason, "detail": exc.detail,
                                                    "server": server, "suppressed": suppressed})
            return
        self.on_beacon(beacon, now)
        self.post(BeaconHeard(now, server, beacon))

    def _check_sender(self, beacon: Beacon, server: int) -> None:
        plan = self.config.plan
        sender = beacon.sender
        if sender == self.config.me or (plan.seed_client_index(sender) is None and plan.shoot_client_index(sender) is None):
            raise BadBeacon("foreign-sender", str(sender))
        if beacon.timestamp_ms is not None:  # authenticated: no replays
            key = (sender, server)
            if beacon.timestamp_ms <= self.last_timestamp.get(key, -1):
                raise BadBeacon("replayed", f"{sender} timestamp {beacon.timestamp_ms}")
            self.last_timestamp[key] = beacon.timestamp_ms

    async def _link_loop(self) -> None:
        names = {BOND_DEVICE, *(tap_name(s) for s in range(self.config.servers))}
        while True:
            try:
                async with EventStream(ipv4_routes=False, ipv6_routes=False) as stream:
                    # What changed while the stream was not there.
                    for link in await dump_links(self.ipr):
                        self.links[link.name] = link
                    self._bond_changed()
                    async for event in stream:
                        if isinstance(event, LinkEvent) and event.link.name in names and not event.deleted:
                            self.links[event.link.name] = event.link
                            # A failover on carrier loss announces itself on the slaves only,
                            # not on the bond: read the bond's active slave afresh.
                            if (bond := await link_by_name(self.ipr, BOND_DEVICE)) is not None:
                                self.links[BOND_DEVICE] = link_facts(bond)
                            self._bond_changed()
            except KERNEL_ERRORS as exc:
                LOG.warning("link events lost; reading the bond again", extra={"error": str(exc)})
                await asyncio.sleep(0.1)

    def _bond_changed(self) -> None:
        bond = self.links.get(BOND_DEVICE)
        if bond is None:
            return
        if bond.mac:
            self.bond_mac = bytes.fromhex(bond.mac.replace(":", ""))
        server_of = {self.links[tap_name(s)].index: s for s in range(self.config.servers) if tap_name(s) in self.links}
        carriers = frozenset(
            s for s in range(self.config.servers)
            if (tap := self.links.get(tap_name(s))) is not None and tap.carrier and tap.master == bond.index
        )
        seen = BondSeen(self.clock(), carriers, server_of.get(bond.active_slave), server_of.get(bond.primary))
        last = self._last_bond
        if last is None or (last.carriers, last.active, last.primary) != (seen.carriers, seen.active, seen.primary):
            self._last_bond = seen
            self.post(seen)
            if last is not None and seen.active != last.active:
                self.on_move(seen.now)

    # --- the decision loop ------------------------------------------------------------

    async def _next_event(self) -> Event:
        """The next posted event, or a Tick once the core's next wake-up is due."""
        return await self.inbox.next(self.core.next_wakeup() - self.clock(), lambda: Tick(self.clock()))

    async def _decision_loop(self) -> None:
        if self.heartbeats is not None:
            self.heartbeats.register("steering", allowed_gap=max(5.0, 20 * self.config.beacon_interval))
        while True:
            event = await self._next_event()
            for effect in self.core.handle(event):
                if isinstance(effect, SendBeacon):
                    self._send(effect.beacon)
                elif isinstance(effect, SetPrimary):
                    await self._set_primary(effect)
                elif isinstance(effect, Metric):
                    apply_metric(self.metrics, effect)
                elif isinstance(effect, Log):
                    write_log(LOG, effect)
            if self.heartbeats is not None:
                self.heartbeats.beat("steering")

    def _send(self, beacon: Beacon) -> None:
        sock = self.sockets.get(beacon.server)
        if sock is None:
            return
        try:
            sock.send(encode(beacon, self.bond_mac, key=self.key, now_ms=self.wall_ms()))
            self.metrics.beacons_sent.labels(beacon.server).inc()
        except OSError as exc:  # the tap lost its client a moment ago
            self.metrics.beacon_send_errors.labels(beacon.server).inc()
            if self.log_limit.allow(("send", beacon.server)) is not None:
                LOG.debug("cannot send beacon", extra={"server": beacon.server, "error": str(exc)})

    async def _set_primary(self, effect: SetPrimary) -> None:
        bond, tap = self.links.get(BOND_DEVICE), self.links.get(tap_name(effect.server))
        if bond is None or tap is None:
            return
        try:
            await set_primary(self.ipr, bond.index, tap.index)
        except KERNEL_ERRORS as exc:
            self.metrics.bond_write_errors.inc()
            LOG.error("cannot set the bond's primary", extra={"server": effect.server, "error": str(exc)})
            return
        if not effect.move:
            LOG.info("bond stays on its server when the other comes back", extra={"server": effect.server})
