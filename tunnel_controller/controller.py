"""Wiring of the tunnel-controller: the loops and what flows between them.

- receive: each datagram is checked (sender in the seed-client range, rate,
  wire form, key) before anything else; accepted ones update the registry
  and wake the reconciler. Nothing here touches the kernel.
- reconcile (``reconciler.py``): expire silent peers, apply the planned steps
  (adds before deletes). Runs when woken (new or changed peer, kernel event)
  and at the next expiry or retry; compares the whole picture with the
  kernel every RESYNC_INTERVAL.
- kernel events: our tunnel or back-route removed (or a tunnel set down)
  behind our back → the reconciler forgets it and restores it.
- watchdog: a receive timeout is a failure; at the threshold, SIGHUP the
  OpenVPN clients.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from ipaddress import IPv6Address

from announcement import ANNOUNCE_PORT, Rejected, decode
from announcement.notices import LEAVING, NOTICE_PORT, SERVING, SERVING_EVERY, encode_notice
from daemonkit.lifecycle import Daemon, ExitCode, Heartbeats, StartupError
from daemonkit.logs import RateLimiter
from netlink_adapter.addresses import IFA_F_NOT_USABLE, describe_address_flags
from netlink_adapter.errors import KERNEL_ERRORS
from steering.core import SteeringConfig
from steering.metrics import SteeringMetrics
from steering.runner import SteeringRunner, SteeringUnavailable
from tunnel_controller import listener
from tunnel_controller.config import TunnelSettings
from tunnel_controller.limits import SourceRateLimiter
from tunnel_controller.metrics import Metrics
from tunnel_controller.netlink import Kernel, event_stream
from tunnel_controller.outcomes import PeerEvent, RejectReason, SignalResult
from tunnel_controller.reconciler import Reconciler
from tunnel_controller.registry import Outcome, PeerRegistry, PeerRejected, Status
from tunnel_controller.watchdog import Watchdog

LOG = logging.getLogger("tunnel_controller")

LISTEN_RETRY = 0.2
LEAVING_EVERY = 0.5  # seconds between two leaving notices to each kube-apiserver


class TunnelController:
    def __init__(
        self,
        settings: TunnelSettings,
        kernel: Kernel,
        metrics: Metrics | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_ms: Callable[[], int] = lambda: time.time_ns() // 1_000_000,
    ):
        self.settings = settings
        self.address_plan = settings.plan
        self.kernel = kernel
        self.metrics = metrics or Metrics()
        self.clock = clock
        self.wall_ms = wall_ms
        self.key = settings.announce_key()
        self.steering: SteeringRunner | None = None
        self.draining = False
        self.serving_wake = asyncio.Event()
        self.registry = PeerRegistry(
            expiry=settings.peer_expiry,
            max_peers=settings.max_peers,
            retry_min=settings.tunnel_retry_min,
            retry_max=settings.tunnel_retry_max,
        )
        self.limiter = SourceRateLimiter(
            settings.rate_limit_per_source, settings.rate_limit_burst, max_sources=max(4096, 4 * settings.max_peers)
        )
        self.watchdog = Watchdog(
            window=settings.watchdog_window_size,
            threshold=settings.watchdog_threshold,
            cooldown=settings.watchdog_cooldown,
            grace=settings.watchdog_grace,
            started=clock(),
        )
        self.heartbeats = Heartbeats(clock)
        self.reconciler = Reconciler(
            settings, self.registry, kernel, self.metrics, clock, beat=lambda: self.heartbeats.beat("reconcile")
        )
        self.stream = None
        self._last_accepted = float("-inf")
        self._log_limits = RateLimiter(10.0, clock)

    # --- start ------------------------------------------------------------

    async def listen(self, stop: asyncio.Event) -> bool:
        """Bind ``[first global bond0 address]:5400``, waiting while it is missing or
        tentative; False if stopped first, StartupError after LISTEN_TIMEOUT."""
        deadline = self.clock() + self.settings.listen_timeout
        last_logged = None
        while not stop.is_set():
            problem = await self._try_listen()
            if problem is None:
                return True
            if self.clock() >= deadline:
                raise StartupError(f"no usable bond0 address after {self.settings.listen_timeout:g} s: {problem}")
            if problem != last_logged or self._log_limits.allow("listen-wait") is not None:
                LOG.info("waiting for the bond0 address", extra={"problem": problem})
                last_logged = problem
            try:
                await asyncio.wait_for(stop.wait(), LISTEN_RETRY)
            except asyncio.TimeoutError:
                pass
        return False

    async def _try_listen(self) -> str | None:
        """None once listening, else what is in the way."""
        try:
            addresses = await self.kernel.bond_addresses()
        except KERNEL_ERRORS as exc:
            return f"cannot read the addresses of bond0: {exc}"
        if addresses is None:
            return "bond0 does not exist"
        if not addresses:
            return "bond0 has no global IPv6 address"
        iface, flags = addresses[0]
        where = f"[{iface.ip}]:{ANNOUNCE_PORT} (address flags: {describe_address_flags(flags)})"
        if flags & IFA_F_NOT_USABLE:
            return f"cannot bind {where}: address not usable yet"
        try:
            self.stream = await listener.bind_announcements(iface.ip, ANNOUNCE_PORT)
        except OSError as exc:
            return f"cannot bind {where}: {exc.strerror or exc}"
        self.reconciler.local = iface.ip
        self.metrics.listening.set(1)
        LOG.info("listening for announcements", extra={
            "address": str(iface.ip), "port": ANNOUNCE_PORT,
            "shoot_client_index": self.address_plan.shoot_client_index(iface.ip),
        })
        return None

    # --- receive ------------------------------------------------------------

    def handle_datagram(self, data: bytes, addr: tuple) -> None:
        """Check one datagram and record it; never touches the kernel."""
        now = self.clock()
        try:
            source = IPv6Address(addr[0].partition("%")[0])
        except ValueError:
            self._reject(RejectReason.FOREIGN_SOURCE, addr[0], "not an IPv6 sender")
            return
        if self.address_plan.seed_client_index(source) is None:
            self._reject(RejectReason.FOREIGN_SOURCE, source, "not in the seed-client range of VPN_NETWORK")
            return
        if not self.limiter.allow(source, now):
            self._reject(RejectReason.RATE_LIMITED, source, "")
            return
        try:
            announcement = decode(
                data, source=source, key=self.key, now_ms=self.wall_ms(),
                max_age_ms=int(self.settings.announce_max_age * 1000),
            )
            inside = [ip for ip in announcement.pod_ips if ip.version == 6 and ip in self.settings.vpn_network]
            if inside:
                raise Rejected(RejectReason.BAD_ADDRESS, f"{inside[0]} lies in VPN_NETWORK")
            seen = self.registry.observe(source, announcement.pod_ips, now, announcement.timestamp_ms)
        except (Rejected, PeerRejected) as exc:
            self._reject(exc.reason, source, exc.detail)
            return
        self.metrics.accepted.labels(announcement.form).inc()
        self._last_accepted = now  # restarts the receive timeout
        self.watchdog.record(False, now)  # a success: it can never trip the watchdog
        peer = seen.peer
        if seen.outcome is Outcome.NEW:
            self.metrics.peer_events.labels(PeerEvent.NEW).inc()
            LOG.info("new kube-apiserver", extra={"remote": str(source), "device": peer.device,
                                                  "pod_ips": [str(ip) for ip in peer.pod_ips],
                                                  "form": announcement.form})
        elif seen.outcome is Outcome.CHANGED:
            self.metrics.peer_events.labels(PeerEvent.POD_IP_CHANGED).inc()
            LOG.info("pod IP changed", extra={"remote": str(source), "device": peer.device,
                                              "pod_ips": [str(ip) for ip in peer.pod_ips],
                                              "previous": [str(ip) for ip in peer.previous_pod_ips]})
            if seen.flapping:
                self.metrics.peer_events.labels(PeerEvent.POD_IP_FLAPPING).inc()
                if (suppressed := self._log_limits.allow(("flap", source))) is not None:
                    LOG.warning(
                        "pod IP alternates: do two kube-apiservers share this bond address?",
                        extra={"remote": str(source), "suppressed": suppressed},
                    )
        if seen.outcome is not Outcome.REFRESHED:
            self.reconciler.announced(peer.device)
            self.metrics.peers.set(len(self.registry))
            self.reconciler.wake.set()

    def _reject(self, reason: str, source, detail: str) -> None:
        self.metrics.rejected.labels(reason).inc()
        suppressed = self._log_limits.allow(("reject", reason))
        if suppressed is not None:
            LOG.warning("announcement rejected", extra={"reason": reason, "source": str(source),
                                                       "detail": detail, "suppressed": suppressed})

    async def _receive_loop(self) -> None:
        while True:
            try:
                data, addr = await self.stream.recv()
            except OSError as exc:  # e.g. an ICMP error queued on the socket
                LOG.warning("receive failed", extra={"error": str(exc)})
                continue
            self.handle_datagram(data, addr)

    # --- reconcile ------------------------------------------------------------

    async def _reconcile_loop(self) -> None:
        reconciler = self.reconciler
        while True:
            try:
                await asyncio.wait_for(reconciler.wake.wait(), reconciler.next_pass_in(self.clock()))
            except asyncio.TimeoutError:
                pass
            reconciler.wake.clear()
            if reconciler.resync_due(self.clock()):
                await reconciler.resync()
            await reconciler.reconcile()
            self.serving_wake.set()  # a tunnel that just became ready is told at once
            self.heartbeats.beat("reconcile")

    async def _serving_loop(self) -> None:
        """Tell each kube-apiserver whose tunnel and back-route are in place that this
        vpn-shoot carries its traffic: at once when they are new, then every
        SERVING_EVERY, not while draining. Its path-controller sends nothing to a vpn-shoot
        that answers probes but does not serve it yet (a pod that just started)."""
        sender = await listener.open_sender(self.reconciler.local)
        told: dict[IPv6Address, float] = {}
        try:
            while True:
                now = self.clock()
                ready = {peer.remote for peer in self.registry.peers.values()
                         if peer.status is Status.READY and not self.draining}
                told = {remote: at for remote, at in told.items() if remote in ready}
                due = [remote for remote in ready if now - told.get(remote, float("-inf")) >= SERVING_EVERY]
                if due:
                    notice = encode_notice(SERVING, self.reconciler.local, self.wall_ms(), self.key)
                    for remote in due:
                        try:
                            await sender.send(notice, (str(remote), NOTICE_PORT))
                            self.metrics.serving_notices.labels("sent").inc()
                        except OSError:
                            self.metrics.serving_notices.labels("failed").inc()
                        told[remote] = now
                wait = min((at + SERVING_EVERY for at in told.values()), default=now + SERVING_EVERY) - self.clock()
                try:
                    await asyncio.wait_for(self.serving_wake.wait(), max(0.01, wait))
                except asyncio.TimeoutError:
                    pass
                self.serving_wake.clear()
        finally:
            sender.close()

    async def _watch_loop(self, started: asyncio.Event) -> None:
        while True:
            watch = event_stream(self.reconciler.watched)
            try:
                await watch.start()
                started.set()
                async for event in watch:
                    self.reconciler.on_kernel_event(event)
            except KERNEL_ERRORS as exc:
                # Typically EventsLost (ENOBUFS): events were lost. Start over and compare everything.
                self.metrics.event_overflows.inc()
                LOG.warning("netlink event stream lost; resyncing", extra={"error": str(exc)})
                self.reconciler.request_resync()
            finally:
                watch.close()
            await asyncio.sleep(0.1)

    # --- watchdog ---------------------------------------------------------------

    async def _watchdog_loop(self) -> None:
        """One failure per WATCHDOG_TIMEOUT without an accepted announcement, measured from the
        last announcement or failure (vpn2's read deadline), without waking per datagram."""
        timeout = self.settings.watchdog_timeout
        last_event = self.clock()
        while True:
            self.heartbeats.beat("watchdog")
            due = max(self._last_accepted, last_event) + timeout
            now = self.clock()
            if now < due:
                await asyncio.sleep(due - now)
                continue
            last_event = now
            self.metrics.watchdog_timeouts.inc()
            if self.watchdog.record(True, now):
                await self.restart_openvpn()

    async def restart_openvpn(self) -> None:
        self.metrics.watchdog_triggers.inc()
        ports = self.settings.management_ports()
        LOG.warning(
            "no announcements: restarting the OpenVPN clients",
            extra={"threshold": self.settings.watchdog_threshold, "window": self.settings.watchdog_window_size,
                   "ports": ports},
        )
        for port in ports:  # each server on its own: one failure must not spare the others
            try:
                await listener.send_management_command(self.settings.management_host, port)
            except (OSError, asyncio.TimeoutError) as exc:
                self.metrics.watchdog_signals.labels(SignalResult.FAILED).inc()
                LOG.warning("cannot signal OpenVPN", extra={"port": port, "error": str(exc) or type(exc).__name__})
            else:
                self.metrics.watchdog_signals.labels(SignalResult.OK).inc()
                LOG.info("sent SIGHUP to OpenVPN", extra={"port": port})

    # --- run ------------------------------------------------------------------

    def readiness(self) -> tuple[bool, str]:
        if self.draining:
            return False, "draining: this vpn-shoot is leaving"
        if self.steering is not None and (alone := self.steering.alone()) is not None:
            return False, alone
        return self.registry.readiness()

    async def _start_steering(self, daemon: Daemon) -> None:
        """Choose this pod's OpenVPN server from the kube-apiservers' beacons (docs/server-steering.md)."""
        settings = self.settings
        config = SteeringConfig(
            self.reconciler.local, settings.plan, settings.ha_vpn_servers, beacon_interval=settings.steering_beacon_interval,
            dead_after=settings.steering_dead_after, settle=settings.steering_settle,
        )
        metrics = SteeringMetrics(self.metrics.registry, "tunnel_controller", settings.ha_vpn_servers)
        runner = SteeringRunner(config, self.kernel.ipr, metrics, key=self.key, clock=self.clock, wall_ms=self.wall_ms,
                                heartbeats=self.heartbeats)
        try:
            await runner.start()
        except SteeringUnavailable as exc:
            LOG.warning(str(exc))
            return
        daemon.on_close(runner.close)
        self.steering = runner
        daemon.loops(runner.tasks())

    async def run(self, daemon: Daemon) -> ExitCode:
        """Listen, adopt, then serve until stopped (``ExitCode.OK``) or until a loop ends
        (``FAILED``); kernel state is left as it is."""
        daemon.on_close(self._stop_listening)
        # Watch first, so nothing that happens while we adopt goes unseen.
        watch_started = asyncio.Event()
        daemon.loop("kernel-events", self._watch_loop(watch_started))
        try:
            await asyncio.wait_for(watch_started.wait(), 5)
        except asyncio.TimeoutError:
            raise StartupError("cannot subscribe to rtnetlink events") from None
        if not await self.listen(daemon.stopping):
            return ExitCode.OK
        await self.reconciler.adopt()
        self.heartbeats.register("reconcile", self.settings.resync_interval + 30)
        self.heartbeats.register("watchdog", 2 * self.settings.watchdog_timeout + 5)
        await self.reconciler.reconcile()
        if self.settings.server_steering:
            await self._start_steering(daemon)
        daemon.loops({"receive": self._receive_loop(), "reconcile": self._reconcile_loop(),
                      "watchdog": self._watchdog_loop(), "serving": self._serving_loop()})
        outcome = await daemon.supervise()
        if outcome is ExitCode.OK and self.settings.drain_seconds > 0:
            await self._drain()  # the loops keep running: tunnels and routes stay in service
        return outcome

    async def _drain(self) -> None:
        """Stopped (the pod goes away): tell every kube-apiserver to send no new
        connection here, while the tunnels and routes keep carrying the open ones,
        for DRAIN_SECONDS (the OpenVPN clients must outlive this: preStop)."""
        self.draining = True
        if self.steering is not None:
            self.steering.core.draining = True  # the beacons say so too
        local = self.reconciler.local
        until = self.clock() + self.settings.drain_seconds
        LOG.info("draining: telling the kube-apiservers this vpn-shoot leaves",
                 extra={"kube_apiservers": len(self.registry), "seconds": self.settings.drain_seconds})
        sender = await listener.open_sender(local)
        try:
            while self.clock() < until:
                notice = encode_notice(LEAVING, local, self.wall_ms(), self.key)
                for peer in list(self.registry.peers.values()):
                    try:
                        await sender.send(notice, (str(peer.remote), NOTICE_PORT))
                        self.metrics.leaving_notices.labels("sent").inc()
                    except OSError:
                        self.metrics.leaving_notices.labels("failed").inc()
                self.heartbeats.beat("reconcile")
                await asyncio.sleep(min(LEAVING_EVERY, max(0.0, until - self.clock())))
        finally:
            sender.close()
        LOG.info("drained; exiting with tunnels and routes left in place")

    def _stop_listening(self) -> None:
        if self.stream is not None:
            self.stream.close()
            self.metrics.listening.set(0)

