"""The path-controller's runner: moves events into the core (``core.PathCore``)
and carries out the effects it returns. It decides nothing.

Loops: the decision loop (the only caller of the core: one event at a time,
or a Tick when the core's next wake-up comes), the echo reader (answers →
events), the route worker (reads and writes routes through netlink, one
piece of work at a time, and reports the result as an event), the netlink
event watcher (route and link changes → events) and the announcer, which
sends the pod IP to every vpn-shoot and decides nothing either.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from ipaddress import IPv6Address

from prometheus_client import CollectorRegistry

import asyncio_dgram

from announcement import Rejected, encode
from announcement.notices import LEAVING, NOTICE_PORT, decode_notice
from bonding.plan import seed_tunnel_name
from daemonkit.effects import Log, Metric, apply_metric, write_log
from daemonkit.inbox import Inbox
from daemonkit.lifecycle import Heartbeats
from daemonkit.logs import RateLimiter
from path_controller.config import PathControllerSettings
from path_controller.core import (
    Answered,
    ApplyPinning,
    BondMoved,
    CoreConfig,
    Effect,
    Event,
    Leaving,
    PathCore,
    PeerAlive,
    PinningApplied,
    PinningFailed,
    ProbeExpired,
    ReadRoutes,
    RoutesRead,
    RoutesUnreadable,
    RoutesWritten,
    SendFailed,
    SendProbe,
    Serving,
    Started,
    Tick,
    WriteRoutes,
)
from netlink_adapter import AsyncIPRoute
from netlink_adapter.errors import KERNEL_ERRORS
from path_controller.metrics import PathMetrics
from path_controller.netlink import Kernel, kernel_events
from path_controller.pin_plan import PinChoice
from path_controller.pinning import ConnectionPinning
from path_controller.probe import ProbeTiming
from path_controller.probing import Probing, ProbePolicy
from path_controller.routes import plan_routes
from path_controller.selection import preference_order
from path_controller.sockets import Announcer, Pinger
from steering.beacon import Beacon
from steering.core import SteeringConfig
from steering.metrics import SteeringMetrics
from steering.runner import SteeringRunner, SteeringUnavailable

LOG = logging.getLogger("path_controller")
WITNESS_EVERY = 0.05  # seconds between two PeerAlive events of one vpn-shoot

# A policy for the core's probing, made at start: ours unless a benchmark brings vpn2's.
PolicyFactory = Callable[[PathControllerSettings, float], ProbePolicy]


def our_probing(settings: PathControllerSettings, now: float) -> Probing:
    return Probing(probe_timing(settings), len(settings.targets), now)


def probe_timing(settings: PathControllerSettings) -> ProbeTiming:
    return ProbeTiming(
        interval=settings.probe_interval,
        burst_interval=settings.probe_burst_interval,
        dead_interval=settings.probe_dead_interval,
        min_lost=settings.probe_min_lost,
        rise=settings.probe_rise,
        late_after=settings.probe_late_after,
        stall_factor=settings.probe_stall_factor,
        stall_memory=settings.probe_stall_memory,
    )


def core_config(
    settings: PathControllerSettings, networks, steering: bool = False, pin_mode: str = "off",
) -> CoreConfig:
    """With server steering the core knows when a vpn-shoot is alive behind a failing
    server (its beacons) and needs no guess from this node's own bond failing over."""
    targets = tuple(settings.targets)
    return CoreConfig(
        targets=targets,
        networks=tuple(networks),
        route_protocol=settings.route_protocol,
        preference=tuple(preference_order(str(settings.pod_ip), len(targets))),
        # Long enough for the preferred target to be called up or down.
        startup_grace=settings.probe_dead_interval * 2,
        failover_hold=0.0 if steering else settings.probe_failover_hold,
        witness_hold=2 * settings.steering_beacon_interval if steering else 0.0,
        route_resync_interval=settings.route_resync_interval,
        tunnel_names=tuple(seed_tunnel_name(j) for j in range(len(targets))),
        pin_mode=pin_mode,
        pin_close_after=settings.pin_close_after,
    )


class PathController:
    def __init__(
        self,
        settings: PathControllerSettings,
        ipr: AsyncIPRoute,
        *,
        key: bytes | None = None,
        registry: CollectorRegistry | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_ms: Callable[[], int] = lambda: time.time_ns() // 1_000_000,
        policy: PolicyFactory = our_probing,
    ):
        self.settings = settings
        self.clock = clock
        self.wall_ms = wall_ms
        self.key = key
        self.targets: list[IPv6Address] = settings.targets
        self.target_index = {address: j for j, address in enumerate(self.targets)}
        self.route_plan = plan_routes(
            settings.shoot_service_networks,
            settings.shoot_pod_networks,
            settings.shoot_node_networks,
            settings.seed_pod_network,
            settings.all_pod_ips,
        )
        self.policy = policy
        self.core: PathCore | None = None  # made at start, once it is known whether steering runs
        self.kernel = Kernel(ipr, settings.route_protocol)
        self.registry = registry or CollectorRegistry()
        self.metrics = PathMetrics(self.registry, targets=len(self.targets))
        self.steering: SteeringRunner | None = None
        self.pinning: ConnectionPinning | None = None
        self._witnessed: dict[int, float] = {}
        self.pinger = Pinger(self._on_answer, self._on_lost, clock=clock)
        self.announcer = Announcer()
        self.heartbeats = Heartbeats(clock)
        self.log_limit = RateLimiter(interval=30.0, clock=clock)
        self.inbox: Inbox[Event] = Inbox()
        self._route_work: asyncio.Queue[ReadRoutes | WriteRoutes | ApplyPinning] = asyncio.Queue()

    # --- start-up ---------------------------------------------------------

    async def start(self) -> None:
        await self.pinger.open()
        if self.settings.server_steering:
            await self._start_steering()
        try:
            found_links = tuple(await self.kernel.links())
        except KERNEL_ERRORS as exc:
            LOG.warning("cannot read links; bond failovers are noticed from the next change", extra={"error": str(exc)})
            found_links = ()
        tunnels = await self.kernel.tunnel_indexes(len(self.targets))
        routes = await self.kernel.routes(self.route_plan.networks)
        pin_mode, pinned = await self._start_pinning(tunnels)
        now = self.clock()
        config = core_config(self.settings, self.route_plan.networks, steering=self.steering is not None, pin_mode=pin_mode)
        self.core = PathCore(config, self.policy(self.settings, now), now)
        await self._apply(self.core.handle(Started(self.clock(), found_links, routes, tunnels, pinned)))
        LOG.info(
            "path-controller started",
            extra={
                "targets": [str(t) for t in self.targets],
                "preference": list(self.core.config.preference),
                "networks": [str(n) for n in self.route_plan.networks],
                "announced_ips": [str(ip) for ip in self.route_plan.announced_ips],
                "nat_mapped": self.route_plan.mapped,
                "connection_pinning": pin_mode,
            },
        )

    async def _start_pinning(self, tunnels: dict[int, int]) -> tuple[str, PinChoice | None]:
        """The pinning mode this kernel allows, and what a predecessor left (adopted, not torn down)."""
        settings = self.settings
        if not settings.connection_pinning:
            return "off", None
        pinning = ConnectionPinning(self.kernel.ipr, settings.route_protocol)
        mode = settings.path_mode
        try:
            lacking = await pinning.probe()
            if lacking is None and mode == "spread" and (no_spread := await pinning.spread_supported()) is not None:
                LOG.warning(f"PATH_MODE=spread not possible, new connections go to the primary: {no_spread}")
                mode = "primary"
            if lacking is None:
                await pinning.install(self.route_plan.networks, tunnels)
        except (*KERNEL_ERRORS, OSError) as exc:
            lacking = f"cannot set up pinning: {exc}"
        if lacking is not None:
            LOG.warning(f"connection pinning off, every connection follows the primary (as with vpn2): {lacking}")
            pinning.close()
            return "off", None
        self.pinning = pinning
        self.metrics.pinning.set(1)
        state = pinning.state
        return mode, PinChoice(state.new_connections, state.refused) if state.new_connections else None

    async def _start_steering(self) -> None:
        local = await self.kernel.bond_address()
        if local is None:
            LOG.warning("server steering off: bond0 has no address; the bond is left to the kernel, as with vpn2")
            return
        settings = self.settings
        config = SteeringConfig(
            local, settings.plan, settings.ha_vpn_servers, beacon_interval=settings.steering_beacon_interval,
            dead_after=settings.steering_dead_after, settle=settings.steering_settle,
        )
        metrics = SteeringMetrics(self.registry, "path_controller", settings.ha_vpn_servers)
        runner = SteeringRunner(config, self.kernel.ipr, metrics, key=self.key, clock=self.clock, wall_ms=self.wall_ms,
                                on_beacon=self._on_beacon, on_move=lambda now: self.post(BondMoved(now)),
                                heartbeats=self.heartbeats)
        try:
            await runner.start()
        except SteeringUnavailable as exc:
            LOG.warning(str(exc))
            return
        self.steering = runner

    def tasks(self) -> dict:
        loops = {
            "echo-reader": self.pinger.run(), "decisions": self._decision_loop(), "routes": self._route_worker(),
            "kernel-events": self._event_loop(), "announce": self._announce_loop(), "notices": self._notice_loop(),
        }
        if self.steering is not None:
            loops.update(self.steering.tasks())
        return loops

    def close(self) -> None:
        """Sockets only: the kernel's routes and pinning stay for the next instance."""
        if self.pinning is not None:
            self.pinning.close()
        self.pinger.close()
        self.announcer.close()
        if self.steering is not None:
            self.steering.close()

    def ready(self) -> tuple[bool, str]:
        if self.core is None:
            return False, "starting"
        if self.steering is not None and (alone := self.steering.alone()) is not None:
            return False, alone
        return self.core.ready()

    # --- events in ----------------------------------------------------------

    def post(self, event: Event) -> None:
        self.inbox.post(event)

    def _on_answer(self, target: IPv6Address, rtt: float, now: float) -> None:
        j = self.target_index.get(target)
        if j is not None:
            self.post(Answered(now, j, rtt))

    def _on_beacon(self, beacon: Beacon, now: float) -> None:
        """A vpn-shoot's beacon says it is alive (a few per probe interval at most)."""
        j = self.target_index.get(beacon.sender)
        if j is not None and now - self._witnessed.get(j, float("-inf")) >= WITNESS_EVERY:
            self._witnessed[j] = now
            self.post(PeerAlive(now, j))

    def _on_lost(self, target: IPv6Address) -> None:
        j = self.target_index.get(target)
        if j is not None:
            self.post(ProbeExpired(self.clock(), j))

    async def _next_event(self) -> Event:
        """The next posted event, or a Tick once the core's next wake-up is due."""
        return await self.inbox.next(self.core.next_wakeup() - self.clock(), lambda: Tick(self.clock()))

    async def _decision_loop(self) -> None:
        self.heartbeats.register("decisions", allowed_gap=max(5.0, 20 * self.settings.probe_interval))
        while True:
            event = await self._next_event()
            await self._apply(self.core.handle(event))
            self.heartbeats.beat("decisions")

    async def _event_loop(self) -> None:
        """Route and link changes, ours included (the core tells them apart)."""
        while True:
            try:
                async for event in kernel_events(self.clock):
                    self.post(event)
            except KERNEL_ERRORS as exc:
                LOG.error("netlink event watch failed; restarting it", extra={"error": str(exc)})
                await asyncio.sleep(1.0)

    # --- effects out --------------------------------------------------------

    async def _apply(self, effects: list[Effect]) -> None:
        for effect in effects:
            if isinstance(effect, SendProbe):
                await self._send_probe(effect.target)
            elif isinstance(effect, Metric):
                apply_metric(self.metrics, effect)
            elif isinstance(effect, Log):
                write_log(LOG, effect)
            else:
                self._route_work.put_nowait(effect)

    async def _send_probe(self, j: int) -> None:
        try:
            await self.pinger.send(self.targets[j])
        except OSError as exc:
            self.post(SendFailed(self.clock(), j, str(exc)))

    async def _route_worker(self) -> None:
        self.heartbeats.register("routes", allowed_gap=self.settings.route_resync_interval * 3 + 5)
        while True:
            work = await self._route_work.get()
            if isinstance(work, ReadRoutes):
                self.post(await self._read_routes(work))
            elif isinstance(work, ApplyPinning):
                self.post(await self._apply_pinning(work))
            else:
                self.post(await self._write_routes(work))
            self.heartbeats.beat("routes")

    async def _read_routes(self, work: ReadRoutes) -> RoutesRead | RoutesUnreadable:
        try:
            oif, outcome = await self.kernel.tunnel(work.primary, self.targets[work.primary])
            present = await self.kernel.routes(self.route_plan.networks)
        except (*KERNEL_ERRORS, LookupError) as exc:
            return RoutesUnreadable(self.clock(), work.primary, str(exc))
        return RoutesRead(self.clock(), work.primary, oif, present, outcome)

    async def _write_routes(self, work: WriteRoutes) -> RoutesWritten:
        failures = []
        moving = self.pinning is not None and work.replace
        if moving:
            failures += await self._pinning_step(self.pinning.main_routes_through(None))  # every pinned packet by mark
        for network in work.replace:
            try:
                await self.kernel.replace(network, work.oif)
            except KERNEL_ERRORS as exc:
                failures.append(f"{network}: {exc}")
        if not failures:
            for network in work.remove:
                try:
                    await self.kernel.remove(network)
                except KERNEL_ERRORS as exc:
                    failures.append(f"remove {network}: {exc}")
        if moving and not failures:
            failures += await self._pinning_step(self.pinning.main_routes_through(work.primary))
        return RoutesWritten(self.clock(), work.primary, work.oif, tuple(failures))

    @staticmethod
    async def _pinning_step(step) -> list[str]:
        try:
            await step
        except KERNEL_ERRORS as exc:
            return [f"pinning: {exc}"]
        return []

    async def _apply_pinning(self, work: ApplyPinning) -> PinningApplied | PinningFailed:
        """Tunnels first (their ifindexes are in the per-vpn-shoot tables), then close, allow, choose."""
        pinning = self.pinning
        closed = {}
        try:
            tunnels = await self.kernel.tunnel_indexes(len(self.targets))
            for j in range(len(self.targets)):
                if pinning.tunnels.get(j) != tunnels.get(j):
                    await pinning.tunnel_changed(j, tunnels.get(j))
            for j in sorted(work.close):
                closed[j] = (await pinning.close_connections(j)).flushed
            for j in sorted(work.allow):
                await pinning.allow(j)
            await pinning.new_connections_spread(work.choice.new_to)
        except (*KERNEL_ERRORS, LookupError) as exc:
            return PinningFailed(self.clock(), str(exc))
        return PinningApplied(self.clock(), work.choice, closed)

    # --- notices of the vpn-shoots (serving us, leaving) ----------------------

    async def _notice_loop(self) -> None:
        """Listen on [bond address]:NOTICE_PORT for vpn-shoots that serve us or drain."""
        stream = None
        while stream is None:
            address = await self._bond_address_or_none()
            if address is not None:
                try:
                    stream = await asyncio_dgram.bind((str(address), NOTICE_PORT))
                except OSError as exc:
                    if self.log_limit.allow("notice-bind") is not None:
                        LOG.warning("cannot listen for vpn-shoot notices yet", extra={"error": str(exc)})
            if stream is None:
                await asyncio.sleep(1.0)
        try:
            while True:
                try:
                    data, addr = await stream.recv()
                except OSError:
                    continue
                self._notice(data, addr[0])
        finally:
            stream.close()

    async def _bond_address_or_none(self) -> IPv6Address | None:
        try:
            return await self.kernel.bond_address()
        except KERNEL_ERRORS:
            return None

    def _notice(self, data: bytes, sender: str) -> None:
        try:
            source = IPv6Address(sender.partition("%")[0])
            j = self.target_index.get(source)
            if j is None:
                raise Rejected("foreign-source", f"{source} is no vpn-shoot")
            verb, _ = decode_notice(data, source=source, key=self.key, now_ms=self.wall_ms())
        except (Rejected, ValueError) as exc:
            reason = exc.reason if isinstance(exc, Rejected) else "malformed"
            self.metrics.notices_rejected.labels(reason).inc()
            if self.log_limit.allow(("notice", reason)) is not None:
                LOG.warning("vpn-shoot notice ignored", extra={"reason": reason, "source": sender})
            return
        self.post((Leaving if verb == LEAVING else Serving)(self.clock(), j))

    # --- announcements ----------------------------------------------------

    def _announcement(self) -> bytes:
        return encode(
            self.route_plan.announced_ips,
            extended=self.settings.announce_all_pod_ips,
            key=self.key,
            source=self.announcer.source,
            now_ms=self.wall_ms(),
        )

    async def _announce_loop(self) -> None:
        self.heartbeats.register("announce", allowed_gap=self.settings.announce_interval * 3 + 5)
        while True:
            if self.announcer.source is None:
                await self._open_announcer()
            if self.announcer.source is not None:
                data = self._announcement()
                for j, target in enumerate(self.targets):
                    try:
                        await self.announcer.send(data, target, self.settings.announce_port)
                        self.metrics.announcements.labels(j).inc()
                    except OSError as exc:
                        self.metrics.announcement_errors.labels(j).inc()
                        if self.log_limit.allow(("announce", j)) is not None:
                            LOG.warning("cannot send announcement", extra={"target": j, "error": str(exc)})
            self.heartbeats.beat("announce")
            await asyncio.sleep(self.settings.announce_interval)

    async def _open_announcer(self) -> None:
        try:
            address = await self.kernel.bond_address()
            if address is not None:
                await self.announcer.open(address)
                LOG.info("announcing", extra={"source": str(address), "port": self.settings.announce_port})
                return
            problem = "bond0 has no global address yet"
        except KERNEL_ERRORS as exc:
            problem = str(exc)
        if self.log_limit.allow("announce-open") is not None:
            LOG.warning("cannot announce yet", extra={"problem": problem})
