"""The path-controller: wires the pure core (probe health, path selection,
route plan) to its adapters (sockets, netlink, HTTP) in independent loops.

Loops: one probe loop per vpn-shoot (a dead or slow target delays nobody),
the echo reader, the announcer, the route reconciler (woken by decisions and
by netlink events, plus a periodic full check) and the netlink event watcher.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter as Tally
from collections.abc import Mapping
from ipaddress import IPv6Address

from prometheus_client import CollectorRegistry
from pyroute2 import AsyncIPRoute
from pyroute2.netlink.exceptions import NetlinkError

from announcement import encode
from bonding.plan import BOND_DEVICE, seed_tunnel_name
from daemonkit.lifecycle import Heartbeats
from daemonkit.logs import RateLimiter
from netlink_adapter.errors import KernelFeatureMissing
from netlink_adapter.events import LinkEvent, RouteEvent
from netlink_adapter.ip6tnl import ensure_ip6tnl
from path_controller.config import PathControllerSettings
from path_controller.metrics import PathMetrics
from path_controller.bondwatch import BondWatch, LinkFacts
from path_controller.netlink import Kernel, link_facts, route_and_link_events
from path_controller.probe import Health, ProbeTiming, TargetHealth, Transition
from path_controller.routes import plan_routes, route_changes
from path_controller.selection import PathSelector, Switch, TargetView, preference_order
from path_controller.sockets import Announcer, Pinger

LOG = logging.getLogger("path_controller")

RETRY_MIN, RETRY_MAX = 0.05, 1.0


class PathController:
    def __init__(
        self,
        settings: PathControllerSettings,
        ipr: AsyncIPRoute,
        *,
        key: bytes | None = None,
        registry: CollectorRegistry | None = None,
        clock=time.monotonic,
    ):
        self.settings = settings
        self.clock = clock
        self.key = key
        self.targets: list[IPv6Address] = settings.targets
        self.target_index = {address: j for j, address in enumerate(self.targets)}
        self.timing = ProbeTiming(
            interval=settings.probe_interval,
            burst_interval=settings.probe_burst_interval,
            dead_interval=settings.probe_dead_interval,
            min_lost=settings.probe_min_lost,
            rise=settings.probe_rise,
            late_after=settings.probe_late_after,
            stall_factor=settings.probe_stall_factor,
            stall_memory=settings.probe_stall_memory,
        )
        now = clock()
        self.health = {j: TargetHealth(self.timing, now) for j in range(len(self.targets))}
        self.route_plan = plan_routes(
            settings.shoot_service_networks,
            settings.shoot_pod_networks,
            settings.shoot_node_networks,
            settings.seed_pod_network,
            settings.all_pod_ips,
        )
        self.kernel = Kernel(ipr, settings.route_protocol)
        self.registry = registry or CollectorRegistry()
        self.metrics = PathMetrics(self.registry)
        self.pinger = Pinger(self._on_answer, self._on_lost, clock=clock)
        self.announcer = Announcer()
        self.heartbeats = Heartbeats(clock)
        self.selector: PathSelector | None = None
        self.routes_dirty = asyncio.Event()
        self.routes_ok = False
        self.route_problem = "routes not written yet"
        self.applied_primary: int | None = None
        self.applied_oif: int | None = None
        self.log_limit = RateLimiter(interval=30.0, clock=clock)
        self.bond_watch = BondWatch(BOND_DEVICE)
        self._answer_waiters: dict[int, asyncio.Future] = {}
        for j in self.health:
            self._export_state(j)

    # --- start-up ---------------------------------------------------------

    async def adopt(self) -> int | None:
        """The vpn-shoot existing routes point to (a previous instance's choice), if any."""
        tunnels = await self.kernel.tunnel_indexes(len(self.targets))
        by_ifindex = {index: j for j, index in tunnels.items()}
        present = await self.kernel.routes(self.route_plan.networks)
        votes = Tally(
            by_ifindex[present[n].oif]
            for n in self.route_plan.networks
            if n in present and present[n].oif in by_ifindex
        )
        if not votes:
            return None
        adopted = votes.most_common(1)[0][0]
        LOG.info(
            "adopted existing routes",
            extra={"primary": adopted, "device": seed_tunnel_name(adopted), "routes": sum(votes.values())},
        )
        return adopted

    async def start(self) -> None:
        await self.pinger.open()
        try:
            for link in await self.kernel.links():
                self.bond_watch.observe(link)  # what is there now is no failover
        except (NetlinkError, OSError) as exc:
            LOG.warning("cannot read links; bond failovers are noticed from the next change", extra={"error": str(exc)})
        adopted = await self.adopt()
        order = preference_order(str(self.settings.pod_ip), len(self.targets))
        # Long enough for the preferred target to be called up or down.
        grace = self.settings.probe_dead_interval * 2
        self.selector = PathSelector(order, self.clock(), grace, adopted)
        self.applied_primary = adopted
        if adopted is not None:
            self.metrics.primary.set(adopted)
            self.routes_dirty.set()  # check the adopted routes are complete
        LOG.info(
            "path-controller started",
            extra={
                "targets": [str(t) for t in self.targets],
                "preference": order,
                "networks": [str(n) for n in self.route_plan.networks],
                "announced_ips": [str(ip) for ip in self.route_plan.announced_ips],
                "nat_mapped": self.route_plan.mapped,
            },
        )

    def tasks(self) -> list:
        loops = [self.pinger.run(), self._announce_loop(), self._route_loop(), self._event_loop()]
        loops += [self._probe_loop(j) for j in range(len(self.targets))]
        return loops

    def close(self) -> None:
        self.pinger.close()
        self.announcer.close()

    # --- health checks ----------------------------------------------------

    def ready(self) -> tuple[bool, str]:
        primary = self.selector.primary if self.selector else None
        if primary is None:
            return False, "no vpn-shoot chosen yet"
        state = self.health[primary].state
        if not state.healthy:
            return False, f"primary vpn-shoot {primary} ({self.targets[primary]}) is {state.value}"
        if not self.routes_ok:
            return False, self.route_problem
        return True, f"ok: shoot networks via {seed_tunnel_name(primary)}"

    # --- probing ----------------------------------------------------------

    async def _probe_loop(self, j: int) -> None:
        """Probe target ``j`` forever; one loop per target, none waits for another.

        Sends fall on a shared time grid so that the loops of all targets wake
        together: on small machines each wake-up, not each packet, is what
        costs CPU. A probe is judged only if no answer came by its deadline.
        """
        target, health = self.targets[j], self.health[j]
        beat = f"probe {j}"
        self.heartbeats.register(beat, allowed_gap=max(5.0, 20 * self.timing.interval))
        next_send = _on_grid(self.clock(), health.next_interval)
        while True:
            await self._sleep_until(next_send)
            sent_at = self.clock()
            try:
                await self.pinger.send(target)
                self.metrics.probes_sent.labels(j).inc()
            except OSError as exc:
                self.metrics.probe_send_errors.labels(j).inc()
                if self.log_limit.allow(("probe-send", j)) is not None:
                    LOG.warning("cannot send probe", extra={"target": j, "error": str(exc)})
            health.sent(sent_at)
            if not await self._answer_by(j, sent_at + min(health.late_after, health.next_interval)):
                now = self.clock()
                self._note(j, health.tick(now), now)
            self.heartbeats.beat(beat)
            next_send = max(_on_grid(sent_at + health.next_interval, health.next_interval), self.clock())

    async def _sleep_until(self, when: float) -> None:
        loop = asyncio.get_running_loop()
        waiter = loop.create_future()
        handle = loop.call_at(when, _settle, waiter, None)
        try:
            await waiter
        finally:
            handle.cancel()

    async def _answer_by(self, j: int, deadline: float) -> bool:
        """True as soon as target ``j`` answers, False at ``deadline``."""
        loop = asyncio.get_running_loop()
        waiter = loop.create_future()
        self._answer_waiters[j] = waiter
        handle = loop.call_at(deadline, _settle, waiter, False)
        try:
            return await waiter
        finally:
            handle.cancel()
            self._answer_waiters.pop(j, None)

    def _on_answer(self, target: IPv6Address, rtt: float, now: float) -> None:
        j = self.target_index.get(target)
        if j is None:
            return
        self.metrics.rtt.labels(j).observe(rtt)
        others = (h for k, h in self.health.items() if k != j)  # read only when an answer is a stall
        self._note(j, self.health[j].answered(rtt, now, others), now)
        waiter = self._answer_waiters.get(j)
        if waiter is not None:
            _settle(waiter, True)

    def _on_lost(self, target: IPv6Address) -> None:
        j = self.target_index.get(target)
        if j is not None:
            self.metrics.probes_lost.labels(j).inc()

    def _note(self, j: int, transition: Transition | None, now: float) -> None:
        health = self.health[j]
        self.metrics.dead_interval.labels(j).set(health.dead_after(now))
        self.metrics.late_after.labels(j).set(health.late_after)
        if transition is not None:
            self._export_state(j)
            # Up and down are events; suspect/rising flicker under loss and stay at debug.
            if transition.new is Health.DOWN:
                level = logging.WARNING
            elif transition.new is Health.UP and transition.old is not Health.SUSPECT:
                level = logging.INFO
            else:
                level = logging.DEBUG
            LOG.log(
                level,
                f"target {transition.new.value}",
                extra={
                    "target": j,
                    "address": str(self.targets[j]),
                    "old": transition.old.value,
                    "reason": transition.reason,
                },
            )
        self._decide(now)

    def _export_state(self, j: int) -> None:
        state = self.health[j].state
        self.metrics.target_state.labels(j).state(state.value)
        self.metrics.target_up.labels(j).set(1 if state.healthy else 0)

    def _decide(self, now: float) -> None:
        if self.selector is None:
            return
        was_stranded = self.selector.stranded
        switch = self.selector.decide(self._selection_view(), now)
        if switch is not None:
            self._switched(switch)
        if self.selector.stranded and not was_stranded:
            LOG.error(
                "no healthy vpn-shoot; keeping routes where they are",
                extra={"primary": self.selector.primary, "states": {j: h.state.value for j, h in self.health.items()}},
            )
        self.metrics.stranded.set(1 if self.selector.stranded else 0)

    def _selection_view(self) -> Mapping[int, TargetView]:
        return self.health

    def _switched(self, switch: Switch) -> None:
        LOG.warning(
            "primary switched",
            extra={"old": switch.old, "new": switch.new, "reason": switch.reason, "device": seed_tunnel_name(switch.new)},
        )
        self.metrics.switches.labels(switch.reason).inc()
        self.metrics.primary.set(switch.new)
        self.routes_dirty.set()

    # --- routes -----------------------------------------------------------

    async def _route_loop(self) -> None:
        self.heartbeats.register("routes", allowed_gap=self.settings.route_resync_interval * 3 + 5)
        delay = RETRY_MIN
        while True:
            try:
                await asyncio.wait_for(self.routes_dirty.wait(), timeout=self.settings.route_resync_interval)
            except asyncio.TimeoutError:
                pass
            self.routes_dirty.clear()
            self.heartbeats.beat("routes")
            primary = self.selector.primary if self.selector else None
            if primary is None:
                continue
            if await self._reconcile(primary):
                delay = RETRY_MIN
                continue
            # Keep at it until the whole set points one way.
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX)
            self.routes_dirty.set()

    async def _primary_tunnel(self, primary: int) -> int:
        """ifindex of the primary's tunnel, recreating it if it vanished or went down."""
        local = await self.kernel.bond_address()
        if local is None:
            raise LookupError("bond0 has no address")
        index, outcome = await ensure_ip6tnl(
            self.kernel.ipr, seed_tunnel_name(primary), local, self.targets[primary]
        )
        if outcome != "kept":
            LOG.warning("tunnel repaired", extra={"device": seed_tunnel_name(primary), "outcome": outcome})
        return index

    async def _reconcile(self, primary: int) -> bool:
        """Point every shoot network at the primary; True when the whole set is consistent."""
        try:
            oif = await self._primary_tunnel(primary)
            present = await self.kernel.routes(self.route_plan.networks)
        except (NetlinkError, OSError, LookupError, KernelFeatureMissing) as exc:
            return self._route_failure(f"cannot set up the primary's tunnel or read routes: {exc}")
        changes = route_changes(self.route_plan.networks, oif, self.settings.route_protocol, present)
        failed = []
        for network in changes.replace:
            try:
                await self.kernel.replace(network, oif)
            except (NetlinkError, OSError) as exc:
                failed.append(f"{network}: {exc}")
        if not failed:
            for network in changes.remove:
                try:
                    await self.kernel.remove(network)
                except (NetlinkError, OSError) as exc:
                    failed.append(f"remove {network}: {exc}")
        if changes.replace and not failed:
            repaired = primary == self.applied_primary
            if repaired:
                self.metrics.route_repairs.inc(len(changes.replace))
            LOG.info(
                "routes restored" if repaired else "routes switched",
                extra={"device": seed_tunnel_name(primary), "networks": [str(n) for n in changes.replace]},
            )
        if failed:
            self.metrics.route_sync_errors.inc(len(failed))
            return self._route_failure(
                f"routes partially switched to {seed_tunnel_name(primary)}: {'; '.join(failed)}"
            )
        self.applied_primary = primary
        self.applied_oif = oif
        if not self.routes_ok:
            self.routes_ok = True
            self.route_problem = ""
            self.metrics.routes_consistent.set(1)
        return True

    def _route_failure(self, problem: str) -> bool:
        if self.routes_ok or self.route_problem != problem:
            LOG.error("route sync failed; retrying", extra={"problem": problem})
        self.routes_ok = False
        self.route_problem = problem
        self.metrics.routes_consistent.set(0)
        return False

    async def _event_loop(self) -> None:
        """Wake the reconciler when a route or tunnel changes behind our back;
        hold down verdicts while this node's bond fails over."""
        while True:
            try:
                async for msg in route_and_link_events():
                    if self._concerns_us(msg):
                        self.routes_dirty.set()
                    link = link_facts(msg)
                    if link is not None and (event := self.bond_watch.observe(link)) is not None:
                        self._bond_failing_over(event, link)
            except (NetlinkError, OSError) as exc:
                LOG.error("netlink event watch failed; restarting it", extra={"error": str(exc)})
                await asyncio.sleep(1.0)

    def _bond_failing_over(self, event: str, link: LinkFacts) -> None:
        self.metrics.bond_failovers.labels(event).inc()
        hold = self.settings.probe_failover_hold
        if hold <= 0:
            return
        until = self.clock() + hold
        for health in self.health.values():
            health.hold(until)
        if self.selector is not None:
            self.selector.hold(until)
        if self.log_limit.allow(("bond", event)) is not None:
            LOG.info(
                "bond failing over; no vpn-shoot is called down while the paths settle",
                extra={"event": event, "device": link.name, "hold_seconds": hold},
            )

    def _concerns_us(self, msg) -> bool:
        if isinstance(msg, LinkEvent):
            return msg.link.name.startswith("bond0")
        if isinstance(msg, RouteEvent):
            route = msg.route
            if route.dst not in self.route_plan.networks:
                return False
            # Our own replace echoes back as NEWROUTE with our mark and device: nothing to do.
            ours = route.proto == self.settings.route_protocol and route.oif == self.applied_oif
            return not (not msg.deleted and ours and self.routes_ok)
        return False

    # --- announcements ----------------------------------------------------

    def _announcement(self) -> bytes:
        ips = self.route_plan.announced_ips
        return encode(
            ips,
            extended=self.settings.announce_all_pod_ips,
            key=self.key,
            source=self.announcer.source,
            now_ms=int(time.time() * 1000),
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
        except (NetlinkError, OSError) as exc:
            problem = str(exc)
        if self.log_limit.allow("announce-open") is not None:
            LOG.warning("cannot announce yet", extra={"problem": problem})


def _on_grid(t: float, step: float) -> float:
    """``t`` rounded to a multiple of ``step``: loops with the same step wake together."""
    return round(t / step) * step


def _settle(waiter: asyncio.Future, value) -> None:
    if not waiter.done():
        waiter.set_result(value)
