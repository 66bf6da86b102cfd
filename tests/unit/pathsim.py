"""Discrete-event simulation of a kube-apiserver's path-controller: the real
core (``path_controller.core.PathCore``) in simulated time, over simulated
paths to the vpn-shoots (loss, delay, death), against a fake kernel that
holds the routes. Nothing here copies a decision of the daemon: the core
decides, the simulation only plays the runner and the network.

Used by the unit tests (short runs), the golden test and
``benchmarks/simulation.py`` (hours of simulated loss).
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from ipaddress import IPv6Address, ip_network

from netlink_adapter.links import LinkFacts
from pyroute2.arp import ARPHRD_ETHER
from path_controller.core import (
    Answered,
    ApplyPinning,
    CoreConfig,
    Effect,
    Event,
    LinkChanged,
    Log,
    Metric,
    PathCore,
    PinningApplied,
    PinningFailed,
    ReadRoutes,
    RouteChanged,
    RoutesRead,
    RoutesWritten,
    SendProbe,
    Started,
    Tick,
    WriteRoutes,
)
from path_controller.pin_plan import PinChoice
from path_controller.probe import Health, ProbeTiming, Transition
from path_controller.probing import Probing, ProbePolicy
from path_controller.routes import Route

PROTOCOL = 118
NETWORKS = (ip_network("100.64.0.0/13"), ip_network("100.96.0.0/11"), ip_network("fd00:96::/56"))
TUNNEL_INDEX = 100  # bond0-ip6tnl<j> has ifindex 100 + j in the fake kernel


@dataclass
class Path:
    """One vpn-shoot as seen over the network."""

    loss_each_way: float = 0.0
    rtt: float = 0.002
    jitter: float = 0.0
    dead_from: float = float("inf")  # no answers to probes sent after this
    alive_from: float = float("inf")  # answers again from here
    outages: tuple[tuple[float, float], ...] = ()  # more (from, until) silences

    def dead(self, t: float) -> bool:
        return any(start <= t < end for start, end in ((self.dead_from, self.alive_from), *self.outages))


class FakeKernel:
    """The routes of the kube-apiserver's namespace, as plain data."""

    def __init__(self, routes: dict | None = None):
        self.routes: dict = dict(routes or {})
        self.refuse: set = set()  # networks whose write fails
        self.pinning: PinChoice | None = None  # what the kernel's pinning holds
        self.closed: list[tuple[float, int]] = []  # (when, vpn-shoot) connections were closed
        self.pinning_fails = False

    def pin(self, work: ApplyPinning, now: float) -> PinningApplied | PinningFailed:
        if self.pinning_fails:
            return PinningFailed(now, "Operation not permitted")
        self.closed += [(now, j) for j in sorted(work.close)]
        self.pinning = work.choice
        return PinningApplied(now, work.choice, {j: 3 for j in work.close})

    def read(self, work: ReadRoutes, now: float) -> RoutesRead:
        return RoutesRead(now, work.primary, TUNNEL_INDEX + work.primary, dict(self.routes))

    def write(self, work: WriteRoutes, now: float) -> RoutesWritten:
        failures = []
        for network in work.replace:
            if network in self.refuse:
                failures.append(f"{network}: refused")
            else:
                self.routes[network] = Route(work.oif, PROTOCOL)
        if not failures:
            for network in work.remove:
                self.routes.pop(network, None)
        return RoutesWritten(now, work.primary, work.oif, tuple(failures))

    def render(self) -> str:
        """The routes as ``ip route`` would list them."""
        lines = []
        for network, route in sorted(self.routes.items(), key=lambda item: (item[0].version, str(item[0]))):
            device = f"bond0-ip6tnl{route.oif - TUNNEL_INDEX}" if route.oif is not None else "?"
            lines.append(f"{network} dev {device} proto {route.protocol}")
        return "\n".join(lines)


@dataclass
class SimResult:
    transitions: list[tuple[float, int, Transition]] = field(default_factory=list)
    switches: list[tuple[float, str, int]] = field(default_factory=list)  # (time, reason, new primary)
    logs: list[tuple[float, Log]] = field(default_factory=list)
    sent: dict[int, int] = field(default_factory=dict)

    def times_entering(self, state: Health, target: int = 0) -> list[float]:
        return [t for t, j, tr in self.transitions if j == target and tr.new is state]

    def times_entering_any(self, state: str) -> list[float]:
        """When any target entered ``state`` ("down", ...)."""
        return [t for t, _, tr in self.transitions if tr.new.value == state]


def config(targets: int = 2, preference: tuple[int, ...] | None = None, timing: ProbeTiming = ProbeTiming(),
           failover_hold: float = 1.5, resync: float = 10.0, pin_mode: str = "off",
           pin_close_after: float = 1.5) -> CoreConfig:
    return CoreConfig(
        targets=tuple(IPv6Address(f"fd8f:6d53:b97a:1::b:{j}") for j in range(targets)),
        networks=NETWORKS,
        route_protocol=PROTOCOL,
        preference=preference or tuple(range(targets)),
        startup_grace=2 * timing.dead_interval,
        failover_hold=failover_hold,
        route_resync_interval=resync,
        pin_mode=pin_mode,
        pin_close_after=pin_close_after,
    )


class Simulation:
    """Play the runner and the network around one PathCore."""

    KERNEL_LATENCY = 0.001  # a netlink round trip

    def __init__(
        self,
        paths: list[Path],
        *,
        timing: ProbeTiming = ProbeTiming(),
        core_config: CoreConfig | None = None,
        policy: Callable[[float], ProbePolicy] | None = None,
        kernel: FakeKernel | None = None,
        seed: int = 1,
        stalls: tuple[tuple[float, float], ...] = (),
        links: tuple[LinkFacts, ...] = (),
    ):
        self.paths = paths
        self.rng = random.Random(seed)
        self.kernel = kernel or FakeKernel()
        self.stalls = stalls
        self.config = core_config or config(len(paths), timing=timing)
        probing = policy(0.0) if policy else Probing(timing, len(paths), 0.0)
        self.core = PathCore(self.config, probing, 0.0)
        self.result = SimResult(sent={j: 0 for j in range(len(paths))})
        self._queue: list[tuple[float, int, object]] = []
        self._order = 0
        self._tick_at: float | None = None
        self.now = 0.0
        tunnels = {j: TUNNEL_INDEX + j for j in range(len(paths))}
        self._deliver(Started(0.0, links, dict(self.kernel.routes), tunnels, self.kernel.pinning))

    # --- scheduling --------------------------------------------------------

    def at(self, t: float, event: Event | Callable[[], None]) -> None:
        """Deliver ``event`` (or run a script step) at simulated time ``t``."""
        self._order += 1
        heapq.heappush(self._queue, (t, self._order, event))

    def run(self, until: float) -> SimResult:
        while self._queue and self._queue[0][0] <= until:
            t, _, item = heapq.heappop(self._queue)
            if isinstance(item, Tick) and t != self._tick_at:
                continue  # superseded by a later plan
            resume = self._stalled_until(t)
            if resume is not None and not callable(item):
                self.at(resume, item if not isinstance(item, Tick) else Tick(resume))
                if isinstance(item, Tick):
                    self._tick_at = resume
                continue
            self.now = t
            if callable(item):
                item()
                self._plan_tick()
            else:
                self._deliver(_at_time(item, t))
        self.now = until
        return self.result

    def _stalled_until(self, t: float) -> float | None:
        for start, length in self.stalls:
            if start <= t < start + length:
                return start + length
        return None

    def _plan_tick(self) -> None:
        wake = max(self.core.next_wakeup(), self.now)
        if self._tick_at is None or wake < self._tick_at or self._tick_at < self.now:
            self._tick_at = wake
            self.at(wake, Tick(wake))

    # --- the runner's part ---------------------------------------------------

    def _deliver(self, event: Event) -> None:
        if isinstance(event, Tick):
            self._tick_at = None
        for effect in self.core.handle(event):
            self._carry_out(effect)
        self._plan_tick()

    def _carry_out(self, effect: Effect) -> None:
        now = self.now
        if isinstance(effect, SendProbe):
            j = effect.target
            self.result.sent[j] += 1
            path = self.paths[j]
            if not path.dead(now) and self.rng.random() >= path.loss_each_way and self.rng.random() >= path.loss_each_way:
                rtt = path.rtt + self.rng.random() * path.jitter
                self.at(now + rtt, Answered(now + rtt, j, rtt))
        elif isinstance(effect, ReadRoutes):
            self.at(now + self.KERNEL_LATENCY, self.kernel.read(effect, now + self.KERNEL_LATENCY))
        elif isinstance(effect, WriteRoutes):
            self.at(now + self.KERNEL_LATENCY, self.kernel.write(effect, now + self.KERNEL_LATENCY))
        elif isinstance(effect, ApplyPinning):
            self.at(now + self.KERNEL_LATENCY, self.kernel.pin(effect, now + self.KERNEL_LATENCY))
        elif isinstance(effect, Log):
            self.result.logs.append((now, effect))
            self._note_log(now, effect)
        elif isinstance(effect, Metric):
            pass

    def _note_log(self, now: float, log: Log) -> None:
        fields = log.fields
        if log.message.startswith("target ") and "old" in fields:
            transition = Transition(Health(fields["old"]), Health(log.message.split()[1]), fields["reason"])
            self.result.transitions.append((now, fields["target"], transition))
        elif log.message == "primary switched":
            self.result.switches.append((now, fields["reason"], fields["new"]))

    # --- scripted faults ------------------------------------------------------

    BOND, TAP0, TAP1 = 5, 3, 4  # ifindexes of bond0 and its slaves in ``bond_links``

    @classmethod
    def bond_links(cls) -> tuple[LinkFacts, ...]:
        """bond0 on tap0, both slaves with carrier: what a start-up dump shows."""
        return (
            LinkFacts(cls.TAP0, "tap0", cls.BOND, True, None, True, ARPHRD_ETHER),
            LinkFacts(cls.TAP1, "tap1", cls.BOND, True, None, True, ARPHRD_ETHER),
            LinkFacts(cls.BOND, "bond0", None, True, cls.TAP0, True, ARPHRD_ETHER),
        )

    def bond_moves(self, t: float, active: int) -> None:
        """This node's bond changes its active slave at ``t`` (a server failover)."""
        self.at(t, LinkChanged(t, LinkFacts(self.BOND, "bond0", None, True, active, True, ARPHRD_ETHER)))

    def route_removed(self, t: float, network) -> None:
        """Someone deletes one of our routes at ``t``."""

        def remove() -> None:
            route = self.kernel.routes.pop(network)
            self.at(t, RouteChanged(t, network, route.oif, route.protocol, removed=True))

        self.at(t, remove)


def _at_time(event: Event, t: float) -> Event:
    """An event delivered late (after a stall) carries its delivery time, as the runner's would."""
    if event.now >= t:
        return event
    if isinstance(event, Answered):
        return Answered(t, event.target, event.rtt + (t - event.now))
    return type(event)(**{**event.__dict__, "now": t})


def simulate(timing: ProbeTiming, path: Path, duration: float, seed: int = 1,
             stall: tuple[float, float] | None = None) -> tuple[SimResult, object]:
    """One target for ``duration`` seconds: (result, its TargetHealth)."""
    simulation = Simulation([path], timing=timing, seed=seed, stalls=(stall,) if stall else ())
    result = simulation.run(duration)
    return result, simulation.core.probing.views()[0]

