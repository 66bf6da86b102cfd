"""Keeps the kernel at the registry's desired state and remembers what it has.

The view (``desired.KernelView``) is our picture of our own objects in the
kernel. Each pass plans from it (adds before deletes), applies the steps
through the netlink adapter and records the state actually reached; kernel
events and periodic resyncs correct the picture when something changes
behind our back, and the next pass restores it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from bonding.plan import SHOOT_TUNNEL_NAME, shoot_tunnel_name
from daemonkit.backoff import Backoff
from tunnel_controller.config import TunnelSettings
from tunnel_controller.desired import (
    DeleteRoute,
    DeleteTunnel,
    EnsureTunnel,
    KernelView,
    ReplaceRoute,
    RouteEntry,
    TunnelSpec,
    desired_state,
    plan,
    routes_by_device,
)
from netlink_adapter.errors import KERNEL_ERRORS
from netlink_adapter.events import Event, LinkEvent, RouteEvent
from netlink_adapter.links import Ensured
from tunnel_controller.metrics import Metrics
from tunnel_controller.netlink import Found, Kernel
from tunnel_controller.outcomes import Operation, PeerEvent, Repaired
from tunnel_controller.registry import PeerRegistry, Status

LOG = logging.getLogger("tunnel_controller")

MIN_WAIT = 0.01  # never spin: at least this long between passes
# Kernel.ensure_tunnel's outcomes that changed something -> what is counted.
OPERATION = {Ensured.CREATED: Operation.TUNNEL_CREATE, Ensured.REPLACED: Operation.TUNNEL_REPLACE,
             Ensured.ADJUSTED: Operation.TUNNEL_ADJUST}


class Reconciler:
    def __init__(
        self,
        settings: TunnelSettings,
        registry: PeerRegistry,
        kernel: Kernel,
        metrics: Metrics,
        clock: Callable[[], float],
        beat: Callable[[], None] = lambda: None,
    ):
        self.settings = settings
        self.address_plan = settings.plan
        self.registry = registry
        self.kernel = kernel
        self.metrics = metrics
        self.clock = clock
        self.beat = beat  # liveness: called after every kernel operation of a long pass
        self.local = None  # our bond address: every tunnel's local end
        self.view = KernelView()
        self.wake = asyncio.Event()  # set when a pass is needed now
        self._resync_at = clock() + settings.resync_interval
        self._deleting: set[str] = set()  # devices whose deletion failed: retried, never re-adopted
        self._delete_backoff = Backoff(settings.tunnel_retry_min, settings.tunnel_retry_max)
        self._delete_retry_at: float | None = None
        self._contested: set = set()
        self._busy: set = set()  # devices and routes being changed right now: their events are ours

    def announced(self, device: str) -> None:
        """Someone announces again for ``device``: it is wanted, not to be deleted."""
        self._deleting.discard(device)

    def request_resync(self) -> None:
        self._resync_at = 0.0
        self.wake.set()

    def resync_due(self, now: float) -> bool:
        return now >= self._resync_at

    async def adopt(self) -> None:
        """Take over the tunnels and back-routes a previous instance left: they stay as they
        are (nothing is recreated that matches) and expire unless someone announces."""
        found = await self.kernel.find()
        adopted = self._merge_found(found)
        self._resync_at = self.clock() + self.settings.resync_interval
        if adopted:
            LOG.info(
                "adopted tunnels left by a previous instance",
                extra={"peers": len(adopted), "devices": sorted(p.device for p in adopted),
                       "back_routes": sum(len(p.pod_ips) for p in adopted)},
            )
        self.update_gauges()

    def _merge_found(self, found: Found) -> list:
        """Rebuild the view from what the kernel has; adopt tunnels nobody knows."""
        now = self.clock()
        view = KernelView()
        names = {}
        adopted = []
        routes_by_index: dict[int, list] = {}
        for route in found.routes:
            routes_by_index.setdefault(route.index, []).append(route)
        for tunnel in found.tunnels:
            remote = tunnel.remote
            ours = (
                remote is not None
                and self.address_plan.seed_client_index(remote) is not None
                and shoot_tunnel_name(remote) == tunnel.name
            )
            if not ours:
                continue  # not something we would have made: leave it alone
            if self.registry.get(remote) is None and tunnel.name not in self._deleting:
                routed = routes_by_index.get(tunnel.index, ())
                pod_ips = tuple(sorted((r.dst.network_address for r in routed), key=lambda ip: (ip.version, ip)))
                adopted.append(self.registry.adopt(remote, pod_ips, now))
                self.metrics.peer_events.labels(PeerEvent.ADOPTED).inc()
            view.track(tunnel.name, tunnel.index)
            names[tunnel.index] = tunnel.name
            if tunnel.matches and tunnel.up and tunnel.local == self.local:
                view.tunnels[tunnel.name] = TunnelSpec(tunnel.name, tunnel.local, remote)
        for route in found.routes:
            name = names.get(route.index)
            if name is not None:
                view.routes[route.dst] = RouteEntry(name, route.proto)
        self.view = view
        return adopted

    def next_pass_in(self, now: float) -> float:
        deadlines = [self._resync_at]
        if (deadline := self.registry.next_deadline(now)) is not None:
            deadlines.append(deadline)
        if self._delete_retry_at is not None:
            deadlines.append(self._delete_retry_at)
        return max(MIN_WAIT, min(deadlines) - now)

    async def resync(self) -> None:
        """Compare the whole picture with the kernel (safety net for missed events)."""
        self._resync_at = self.clock() + self.settings.resync_interval
        try:
            found = await self.kernel.find()
        except KERNEL_ERRORS as exc:
            LOG.warning("resync failed", extra={"error": str(exc)})
            return
        before = self.view
        if adopted := self._merge_found(found):
            LOG.info("adopted tunnels that appeared behind our back",
                     extra={"peers": len(adopted), "devices": sorted(p.device for p in adopted)})
        self.metrics.resyncs.inc()
        for name, spec in before.tunnels.items():
            if name not in self.view.tunnels and self._owner(name) is not None:
                self._repaired(Repaired.TUNNEL, name, "missing or changed (found by resync)")
        for dst, entry in before.routes.items():
            if dst not in self.view.routes and self._owner(entry.device) is not None:
                self._repaired(Repaired.ROUTE, entry.device, f"{dst} missing (found by resync)")

    def _owner(self, device: str):
        """The peer a device belongs to: its name carries the seed-client index."""
        if not SHOOT_TUNNEL_NAME.match(device) or (index := int(device[-4:], 16)) == 0:
            return None
        return self.registry.get(self.address_plan.seed_client(index))

    def _repaired(self, what: Repaired, device: str, detail: str) -> None:
        self.metrics.repairs.labels(what).inc()
        peer = self._owner(device)
        if peer is not None:
            self.registry.unsettled(peer.remote)
        LOG.warning(f"{what} removed behind our back; restoring", extra={"device": device, "detail": detail})

    async def reconcile(self) -> None:
        """One pass: expire, plan, apply, record the state reached."""
        now = self.clock()
        for peer in self.registry.expire(now):
            self.metrics.peer_events.labels(PeerEvent.EXPIRED).inc()
            LOG.info("kube-apiserver expired", extra={"remote": str(peer.remote), "device": peer.device,
                                                      "pod_ips": [str(ip) for ip in peer.pod_ips],
                                                      "adopted": peer.adopted})
        if self.local is None:
            return
        desired = desired_state(self.registry.peers.values(), self.local)
        if new := desired.contested - self._contested:
            self.metrics.contested.inc(len(new))
            LOG.warning("pod IP claimed by more than one kube-apiserver; the newest claim wins",
                        extra={"pod_ips": sorted(str(dst) for dst in new)})
        self._contested = desired.contested
        held = self.registry.held_devices(now)
        proto = self.settings.route_protocol
        failed: set[str] = set()
        delete_failed = False
        for step in plan(desired, self.view, proto, held):
            if isinstance(step, EnsureTunnel):
                if not await self._ensure_tunnel(step.spec, desired):
                    failed.add(step.spec.name)
            elif isinstance(step, ReplaceRoute):
                if step.device in failed:
                    continue
                if not await self._replace_route(step.dst, step.device, desired):
                    failed.add(step.device)
            elif isinstance(step, DeleteRoute):
                delete_failed |= not await self._delete_route(step.dst, step.device)
            elif isinstance(step, DeleteTunnel):
                delete_failed |= not await self._delete_tunnel(step.name)
            self.beat()
        self._schedule_delete_retry(delete_failed)
        self._settle(desired, held | failed)
        self.update_gauges()

    def _settle(self, desired, skip: set[str]) -> None:
        """Peers whose tunnel and routes are all in place are ready."""
        proto = self.settings.route_protocol
        by_device = routes_by_device(desired)
        for device, remote in desired.owners.items():
            if device in skip:
                continue
            peer = self.registry.get(remote)
            if peer is None or peer.status is Status.READY:
                continue
            wanted = RouteEntry(device, proto)
            if self.view.tunnels.get(device) == desired.tunnels[device] and all(
                self.view.routes.get(dst) == wanted for dst in by_device.get(device, ())
            ):
                self.registry.succeeded(remote)
                LOG.info("tunnel ready", extra={"remote": str(remote), "device": device,
                                                "pod_ips": [str(ip) for ip in peer.pod_ips]})

    def _failed(self, device: str, op: Operation, exc: BaseException, desired) -> None:
        self.metrics.failures.labels(op).inc()
        remote = desired.owners.get(device)
        delay = self.registry.failed(remote, f"{op} failed: {exc}", self.clock()) if remote else 0.0
        LOG.warning("kernel operation failed", extra={"op": op, "device": device, "error": str(exc),
                                                      "retry_in": round(delay, 3)})

    async def _ensure_tunnel(self, spec: TunnelSpec, desired) -> bool:
        self._busy.add(spec.name)
        try:
            index, outcome = await self.kernel.ensure_tunnel(spec, expect_new=spec.name not in self.view.indexes)
        except KERNEL_ERRORS as exc:
            self._failed(spec.name, Operation.TUNNEL_ENSURE, exc, desired)
            return False
        finally:
            self._busy.discard(spec.name)
        if outcome in (Ensured.CREATED, Ensured.REPLACED):
            self.view.forget_tunnel(spec.name)
        self.view.track(spec.name, index)
        self.view.tunnels[spec.name] = spec
        if outcome is not Ensured.KEPT:
            self.metrics.operations.labels(OPERATION[outcome]).inc()
            # Creation is routine (the peer's "new kube-apiserver" and "tunnel ready" say enough);
            # replacing or fixing a device that was there is worth an operator's attention.
            level = logging.DEBUG if outcome is Ensured.CREATED else logging.INFO
            LOG.log(level, f"tunnel {outcome}", extra={"device": spec.name, "remote": str(spec.remote)})
        return True

    async def _replace_route(self, dst, device: str, desired) -> bool:
        index = self.view.indexes.get(device)
        if index is None:
            return False
        self._busy.add(dst)
        try:
            await self.kernel.replace_route(dst, index)
        except KERNEL_ERRORS as exc:
            self._failed(device, Operation.ROUTE_REPLACE, exc, desired)
            return False
        finally:
            self._busy.discard(dst)
        self.view.routes[dst] = RouteEntry(device, self.settings.route_protocol)
        self.metrics.operations.labels(Operation.ROUTE_REPLACE).inc()
        return True

    async def _delete_route(self, dst, device: str) -> bool:
        index = self.view.indexes.get(device)
        entry = self.view.routes.pop(dst, None)
        if index is None:
            return True
        self._busy.add(dst)
        try:
            await self.kernel.delete_route(dst, index)
        except KERNEL_ERRORS as exc:
            if entry is not None:
                self.view.routes[dst] = entry
            self.metrics.failures.labels(Operation.ROUTE_DELETE).inc()
            LOG.warning("kernel operation failed", extra={"op": Operation.ROUTE_DELETE, "device": device,
                                                          "dst": str(dst), "error": str(exc)})
            return False
        finally:
            self._busy.discard(dst)
        self.metrics.operations.labels(Operation.ROUTE_DELETE).inc()
        return True

    async def _delete_tunnel(self, name: str) -> bool:
        self._busy.add(name)
        try:
            await self.kernel.delete_tunnel(name)
        except KERNEL_ERRORS as exc:
            self._deleting.add(name)
            self.metrics.failures.labels(Operation.TUNNEL_DELETE).inc()
            LOG.warning("kernel operation failed", extra={"op": Operation.TUNNEL_DELETE, "device": name, "error": str(exc)})
            return False
        finally:
            self._busy.discard(name)
        self._deleting.discard(name)
        self.view.forget_tunnel(name)
        self.metrics.operations.labels(Operation.TUNNEL_DELETE).inc()
        LOG.info("tunnel deleted", extra={"device": name})
        return True

    def _schedule_delete_retry(self, failed: bool) -> None:
        if not failed:
            self._delete_backoff.reset()
            self._delete_retry_at = None
            return
        self._delete_retry_at = self.clock() + self._delete_backoff.next()

    # --- kernel events ----------------------------------------------------------

    def watched(self, index: int) -> bool:
        return self.view.device_of(index) is not None

    def on_kernel_event(self, event: Event) -> None:
        """A tunnel deleted or set down, or a back-route deleted, behind our back: forget it
        and wake a pass that restores it (events of our own changes are ignored)."""
        if isinstance(event, LinkEvent):
            name = self.view.device_of(event.link.index)
            if name is None or name in self._busy:
                return
            if event.deleted:
                self.view.forget_tunnel(name)
            elif not event.link.up and name in self.view.tunnels:
                del self.view.tunnels[name]
            else:
                return
            if self._owner(name) is not None:
                self._repaired(Repaired.TUNNEL, name, "deleted" if event.deleted else "set down")
                self.wake.set()
        elif isinstance(event, RouteEvent) and event.deleted:
            dst = event.route.dst
            entry = self.view.routes.get(dst)
            if (
                entry is None
                or dst in self._busy
                or entry.device in self._busy  # its device is being replaced or deleted by us
                or self.view.indexes.get(entry.device) != event.route.oif
            ):
                return
            del self.view.routes[dst]
            if self._owner(entry.device) is not None:
                self._repaired(Repaired.ROUTE, entry.device, f"{dst} deleted")
                self.wake.set()

    def update_gauges(self) -> None:
        self.metrics.peers.set(len(self.registry))
        self.metrics.tunnels.set(len(self.view.tunnels))
        self.metrics.back_routes.set(len(self.view.routes))
        self.metrics.peers_not_ready.set(
            sum(1 for peer in self.registry.peers.values() if peer.pod_ips and peer.status is not Status.READY)
        )
