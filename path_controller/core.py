"""The path-controller's decisions (pure, clock passed in): events in, effects out.

The runner tells the core what happened — a probe answered or refused, a
link or route changed, what the kernel's routes look like, how a route
write went, or only that time passed — always with ``now``; the core
returns what to do: send a probe, read or write the routes, log, update a
metric. It does no I/O and reads no clock; ``next_wakeup()`` says when the
runner must come back with a ``Tick``. The unit tests, the simulation and
the daemon all drive this same object.

What it decides:
* probing: the probe policy (``probing.Probing``, or vpn2's timing) says
  which probes are due and which verdicts changed;
* which vpn-shoot is primary (``selection.PathSelector``), holding the down
  verdict of a vpn-shoot that server steering still hears (it is alive, a
  server between us failed and the bonds are moving), or, without steering,
  holding verdicts while this node's bond fails over (``bondwatch``);
* at start, which vpn-shoot the routes a previous instance left point to;
* the routes: read the kernel's, compute the change (add before delete),
  write it, report the state reached, retry with backoff until the whole
  set points one way; re-read on a route or tunnel change that is not our
  own echo and every ``route_resync_interval``.
"""

from __future__ import annotations

import logging
from collections import Counter as Tally
from collections.abc import Mapping
from dataclasses import dataclass, field
from ipaddress import IPv6Address

from daemonkit.backoff import Backoff
from daemonkit.effects import Log, Metric
from daemonkit.logs import RateLimiter
from path_controller.bondwatch import SLAVE_GAINED_CARRIER, BondWatch, LinkFacts
from path_controller.pin_plan import PinChoice, PinPlan
from path_controller.probe import Health, Transition
from path_controller.probing import ProbePolicy
from path_controller.routes import IPNetwork, Route, route_changes
from path_controller.selection import PathSelector, Switch

# --- events (runner → core) --------------------------------------------------


@dataclass(frozen=True)
class Started:
    """What the kernel holds at start: links (bond state), our routes, the tunnels' ifindexes."""

    now: float
    links: tuple[LinkFacts, ...]
    routes: Mapping[IPNetwork, Route]
    tunnels: Mapping[int, int]  # vpn-shoot index → ifindex of bond0-ip6tnl<j>
    pinned: PinChoice | None = None  # the pinning a predecessor left (adopted), if pinning is on


@dataclass(frozen=True)
class Tick:
    now: float


@dataclass(frozen=True)
class Answered:
    now: float
    target: int
    rtt: float


@dataclass(frozen=True)
class SendFailed:
    now: float
    target: int
    error: str


@dataclass(frozen=True)
class ProbeExpired:
    """The socket gave up matching a probe: it was never answered."""

    now: float
    target: int


@dataclass(frozen=True)
class PeerAlive:
    """Server steering heard vpn-shoot ``target``'s beacon through some server just now."""

    now: float
    target: int


@dataclass(frozen=True)
class BondMoved:
    """Server steering saw this node's bond change server (it may not show on the bond's link)."""

    now: float


@dataclass(frozen=True)
class Serving:
    """vpn-shoot ``target`` has this kube-apiserver's tunnel and back-route (its notice arrived)."""

    now: float
    target: int


@dataclass(frozen=True)
class Leaving:
    """vpn-shoot ``target`` drains (its notice arrived): no new connection there."""

    now: float
    target: int


@dataclass(frozen=True)
class LinkChanged:
    now: float
    link: LinkFacts
    removed: bool = False


@dataclass(frozen=True)
class RouteChanged:
    now: float
    network: IPNetwork
    oif: int | None
    protocol: int
    removed: bool = False


@dataclass(frozen=True)
class RoutesRead:
    """Answer to ReadRoutes: the primary's tunnel exists (``tunnel`` says what it took) with ``oif``."""

    now: float
    primary: int
    oif: int
    present: Mapping[IPNetwork, Route]
    tunnel: str = "kept"  # kept | created | replaced | adjusted


@dataclass(frozen=True)
class RoutesUnreadable:
    now: float
    primary: int
    problem: str


@dataclass(frozen=True)
class RoutesWritten:
    """Answer to WriteRoutes: what failed (empty: the whole change is in place)."""

    now: float
    primary: int
    oif: int
    failures: tuple[str, ...] = ()


@dataclass(frozen=True)
class PinningApplied:
    """Answer to ApplyPinning: the kernel pins as ``choice`` says; ``closed``: connections closed per vpn-shoot."""

    now: float
    choice: PinChoice
    closed: Mapping[int, int] = field(default_factory=dict)


@dataclass(frozen=True)
class PinningFailed:
    now: float
    problem: str


Event = (
    Started | Tick | Answered | SendFailed | ProbeExpired | PeerAlive | BondMoved | Serving | Leaving | LinkChanged | RouteChanged
    | RoutesRead | RoutesUnreadable | RoutesWritten | PinningApplied | PinningFailed
)

# --- effects (core → runner) ---------------------------------------------------


@dataclass(frozen=True)
class SendProbe:
    target: int


@dataclass(frozen=True)
class ReadRoutes:
    """Make sure the primary's tunnel exists and is up (idempotent), then read the routes."""

    primary: int


@dataclass(frozen=True)
class WriteRoutes:
    """Point ``replace`` at ``oif``; only if all of that worked, delete ``remove`` (add before delete)."""

    primary: int
    oif: int
    replace: tuple[IPNetwork, ...]
    remove: tuple[IPNetwork, ...]


@dataclass(frozen=True)
class ApplyPinning:
    """Close (refuse, drop the connections of) ``close``, allow ``allow`` again, then send new
    connections where ``choice`` says; all through the kernel's pinning, in that order."""

    choice: PinChoice
    close: frozenset[int] = frozenset()
    allow: frozenset[int] = frozenset()


Effect = SendProbe | ReadRoutes | WriteRoutes | ApplyPinning | Log | Metric


@dataclass(frozen=True)
class CoreConfig:
    targets: tuple[IPv6Address, ...]  # bond addresses of the vpn-shoots, by index
    networks: tuple[IPNetwork, ...]  # what the primary's tunnel carries
    route_protocol: int
    preference: tuple[int, ...]  # this kube-apiserver's order of the vpn-shoots
    startup_grace: float  # how long the first choice waits for the preferred target's verdict
    failover_hold: float  # no down verdict this long after this node's bond moved (0: off)
    route_resync_interval: float
    # A silent target whose beacons steering still hears is not called down for this long
    # after each one, at most witness_max after its silence began: its vpn-shoot is alive,
    # only the server between us failed, and steering is moving the bonds (0: off).
    witness_hold: float = 0.0
    witness_max: float = 3.0
    leaving_for: float = 5.0  # a vpn-shoot counts as leaving this long after its last notice
    # A vpn-shoot that has sent serving notices and then came back from down (a replaced
    # pod: its OpenVPN clients connect before its tunnel-controller runs) takes no traffic
    # until it serves again; one still silent about it serving_forget after it came back is
    # judged by its probes alone (rolled back to vpn2's tunnel-controller, which sends none).
    serving_forget: float = 30.0
    retry_min: float = 0.05  # route writes that failed: first retry, doubling up to retry_max
    retry_max: float = 1.0
    bond_device: str = "bond0"
    tunnel_names: tuple[str, ...] = ()  # bond0-ip6tnl<j>, for logs
    pin_mode: str = "off"  # off | primary | spread (pin_plan.MODES)
    pin_close_after: float = 1.5  # a vpn-shoot down this long has its pinned connections closed


class PathCore:
    def __init__(self, config: CoreConfig, probing: ProbePolicy, now: float):
        self.config = config
        self.probing = probing
        self.now = now
        self.selector: PathSelector | None = None
        self.bond_watch = BondWatch(config.bond_device)
        self.log_limit = RateLimiter(interval=30.0, clock=lambda: self.now)
        # Routes: what we last made the kernel hold, and what we are doing about it.
        self.routes_ok = False
        self.route_problem = "routes not written yet"
        self.applied_primary: int | None = None
        self.applied_oif: int | None = None
        self.routes_wanted = False  # a read (and maybe a write) is needed
        self.route_work: ReadRoutes | WriteRoutes | None = None  # in flight with the runner
        self.retry_at = float("-inf")
        self.backoff = Backoff(config.retry_min, config.retry_max)
        self.resync_at = now + config.route_resync_interval
        self.leaving: dict[int, float] = {}  # vpn-shoot → its last leaving notice
        self.serving_at: dict[int, float] = {}  # vpn-shoot → its last serving notice
        self.came_up: dict[int, float] = {}  # vpn-shoot → when it last became healthy after being down
        self.waiting_logged: frozenset[int] = frozenset()
        # Pinning: what we want the kernel's pinning to be, and the one change in flight.
        self.pins = PinPlan(config.pin_mode, config.pin_close_after)
        self.pin_work: ApplyPinning | None = None
        self.pin_recheck = False  # a tunnel changed, or time for a periodic rewrite
        self.pin_problem = ""
        self.pin_retry_at = float("-inf")
        self.pin_backoff = Backoff(config.retry_min, config.retry_max)
        self._out: list[Effect] = []

    # --- the one entry point -------------------------------------------------

    def handle(self, event: Event) -> list[Effect]:
        self.now = max(self.now, event.now)
        handler = getattr(self, f"_on_{type(event).__name__}")
        handler(event)
        self._step()
        out, self._out = self._out, []
        return out

    def next_wakeup(self) -> float:
        """When the runner must send a Tick if nothing else happens first."""
        wakeups = [self.probing.next_wakeup(), self.resync_at]
        wakeups += [at + self.config.leaving_for for at in self.leaving.values() if at + self.config.leaving_for > self.now]
        if self.routes_wanted and self.route_work is None and self.retry_at > self.now:
            wakeups.append(self.retry_at)  # a retry after its backoff
        if self.pins.on:
            wakeups.append(self.pins.next_wakeup(self.now))
            if self.pin_problem and self.pin_work is None and self.pin_retry_at > self.now:
                wakeups.append(self.pin_retry_at)
        if self.selector is not None and self.selector.primary is None:
            grace_ends = self.selector.started + self.selector.startup_grace
            if grace_ends > self.now:
                wakeups.append(grace_ends)  # the first choice stops waiting for the preferred target
        return min(wakeups)

    def ready(self) -> tuple[bool, str]:
        primary = self.primary
        if primary is None:
            return False, "no vpn-shoot chosen yet"
        state = self.probing.views()[primary].state
        if not state.healthy:
            return False, f"primary vpn-shoot {primary} ({self.config.targets[primary]}) is {state.value}"
        if not self.routes_ok:
            return False, self.route_problem
        if self.pin_problem:
            return False, self.pin_problem
        return True, f"ok: shoot networks via {self._tunnel(primary)}"

    @property
    def primary(self) -> int | None:
        return self.selector.primary if self.selector else None

    # --- events ----------------------------------------------------------------

    def _on_Started(self, event: Started) -> None:
        for link in event.links:
            self.bond_watch.observe(link)  # what is there now is no failover
        adopted = self._adopt(event.routes, event.tunnels)
        config = self.config
        self.selector = PathSelector(list(config.preference), self.now, config.startup_grace, adopted)
        self.applied_primary = adopted
        self.pins.applied = event.pinned
        self._metric("routes_consistent", "set", 0)
        self._metric("primary", "set", -1 if adopted is None else adopted)
        for j in range(len(config.targets)):
            self._export_state(j)
        if adopted is not None:
            self._want_routes()  # check the adopted routes are complete

    def _adopt(self, routes: Mapping[IPNetwork, Route], tunnels: Mapping[int, int]) -> int | None:
        """The vpn-shoot most existing routes point to (a previous instance's choice), if any."""
        by_ifindex = {index: j for j, index in tunnels.items()}
        votes = Tally(
            by_ifindex[routes[n].oif] for n in self.config.networks if n in routes and routes[n].oif in by_ifindex
        )
        if not votes:
            return None
        adopted = votes.most_common(1)[0][0]
        self._log(logging.INFO, "adopted existing routes",
                  {"primary": adopted, "device": self._tunnel(adopted), "routes": sum(votes.values())})
        return adopted

    def _on_Tick(self, event: Tick) -> None:
        pass  # _step does what time brings

    def _on_Answered(self, event: Answered) -> None:
        self._metric("rtt", "observe", event.rtt, (event.target,))
        self._verdicts(self.probing.answered(event.target, event.rtt, self.now))

    def _on_SendFailed(self, event: SendFailed) -> None:
        self._metric("probe_send_errors", "inc", 1, (event.target,))
        if self.log_limit.allow(("probe-send", event.target)) is not None:
            self._log(logging.WARNING, "cannot send probe", {"target": event.target, "error": event.error})

    def _on_ProbeExpired(self, event: ProbeExpired) -> None:
        self._metric("probes_lost", "inc", 1, (event.target,))

    def _on_Leaving(self, event: Leaving) -> None:
        self._metric("leaving_notices", "inc", 1, (event.target,))
        if event.target not in self.leaving:
            self._log(logging.INFO, "vpn-shoot leaving: no new connections there", {
                "target": event.target, "address": str(self.config.targets[event.target]),
            })
        self.leaving[event.target] = self.now

    def _on_BondMoved(self, event: BondMoved) -> None:
        self.probing.bond_moved(self.now)

    def _on_Serving(self, event: Serving) -> None:
        self._metric("serving_notices", "inc", 1, (event.target,))
        self.serving_at[event.target] = self.now

    def _waiting(self) -> frozenset[int]:
        """vpn-shoots that served us, came back from down and do not serve again yet: no traffic there."""
        config = self.config
        waiting = frozenset(
            j for j, at in self.serving_at.items()
            if at < self.came_up.get(j, float("-inf")) and self.now - self.came_up[j] <= config.serving_forget
        )
        if waiting != self.waiting_logged:
            for j in sorted(waiting - self.waiting_logged):
                self._log(logging.WARNING, "vpn-shoot does not serve us (no tunnel to us yet): no traffic there", {
                    "target": j, "address": str(config.targets[j]), "back_seconds": round(self.now - self.came_up[j], 1),
                })
            for j in sorted(self.waiting_logged - waiting):
                self._log(logging.INFO, "vpn-shoot serves us again", {"target": j})
            self.waiting_logged = waiting
        return waiting

    def _leaving_now(self) -> frozenset[int]:
        for j, at in list(self.leaving.items()):
            if self.now - at > self.config.leaving_for:
                del self.leaving[j]  # gone (down) or kept after all
        return frozenset(self.leaving)

    def _on_PeerAlive(self, event: PeerAlive) -> None:
        if self.config.witness_hold > 0:
            self.probing.witness(event.target, self.now, self.config.witness_hold, self.config.witness_max)

    def _on_LinkChanged(self, event: LinkChanged) -> None:
        link = event.link
        if link.name.startswith(self.config.bond_device):
            self._want_routes()  # the bond or one of our tunnels changed
            self.pin_recheck = True  # a tunnel's ifindex is in the per-vpn-shoot tables
        if event.removed:
            return
        if (failover := self.bond_watch.observe(link)) is not None:
            self._bond_failing_over(failover, link)

    def _on_RouteChanged(self, event: RouteChanged) -> None:
        if event.network not in self.config.networks:
            return
        # Our own write echoes back as a new route with our mark and device: nothing to do.
        ours = event.protocol == self.config.route_protocol and event.oif == self.applied_oif
        if event.removed or not (ours and self.routes_ok):
            self._want_routes()

    def _on_RoutesRead(self, event: RoutesRead) -> None:
        self.route_work = None
        if event.tunnel != "kept":
            self._log(logging.WARNING, "tunnel repaired", {"device": self._tunnel(event.primary), "outcome": event.tunnel})
        if event.primary != self.primary:
            self._want_routes()  # switched meanwhile: start over
            return
        changes = route_changes(self.config.networks, event.oif, self.config.route_protocol, event.present)
        if changes.replace or changes.remove:
            self.route_work = WriteRoutes(event.primary, event.oif, changes.replace, changes.remove)
            self._out.append(self.route_work)
        else:
            self._routes_consistent(event.primary, event.oif)

    def _on_RoutesUnreadable(self, event: RoutesUnreadable) -> None:
        self.route_work = None
        self._route_failure(f"cannot set up the primary's tunnel or read routes: {event.problem}")

    def _on_RoutesWritten(self, event: RoutesWritten) -> None:
        work, self.route_work = self.route_work, None
        if event.failures:
            self._metric("route_sync_errors", "inc", len(event.failures))
            self._route_failure(
                f"routes partially switched to {self._tunnel(event.primary)}: {'; '.join(event.failures)}"
            )
            return
        if isinstance(work, WriteRoutes) and work.replace:
            repaired = event.primary == self.applied_primary
            if repaired:
                self._metric("route_repairs", "inc", len(work.replace))
            self._log(logging.INFO, "routes restored" if repaired else "routes switched",
                      {"device": self._tunnel(event.primary), "networks": [str(n) for n in work.replace]})
        self._routes_consistent(event.primary, event.oif)
        if event.primary != self.primary:
            self._want_routes()

    # --- decisions -------------------------------------------------------------

    def _step(self) -> None:
        """What the time brings: due probes and verdicts, the selection, route work."""
        sends, verdicts = self.probing.step(self.now)
        self._verdicts(verdicts)
        for j in sends:
            self._out.append(SendProbe(j))
            self._metric("probes_sent", "inc", 1, (j,))
        self._decide()
        if self.now >= self.resync_at:
            self.resync_at = self.now + self.config.route_resync_interval
            self._want_routes()
            self.pin_recheck = True
        self._start_route_work()
        self._start_pin_work()

    def _verdicts(self, verdicts: list[tuple[int, Transition]]) -> None:
        for j, transition in verdicts:
            self._export_state(j)
            # Up and down are events; suspect/rising flicker under loss and stay at debug.
            if transition.new is Health.DOWN:
                level = logging.WARNING
            elif transition.new is Health.UP and transition.old is not Health.SUSPECT:
                level = logging.INFO
            else:
                level = logging.DEBUG
            self._log(level, f"target {transition.new.value}", {
                "target": j, "address": str(self.config.targets[j]),
                "old": transition.old.value, "reason": transition.reason,
            })
            self.pins.observe(j, transition.new.healthy, self.now)
            if transition.new.healthy and transition.old in (Health.DOWN, Health.RISING):
                self.came_up[j] = self.now
        touched = {j for j, _ in verdicts}
        for j in touched:
            for name, value in self.probing.gauges(j, self.now).items():
                self._metric(name, "set", value, (j,))
        if verdicts:
            self._decide()

    def _decide(self) -> None:
        if self.selector is None:
            return
        was_stranded = self.selector.stranded
        switch = self.selector.decide(self.probing.views(), self.now, self._leaving_now(), self._waiting())
        if switch is not None:
            self._switched(switch)
        if self.selector.stranded and not was_stranded:
            self._log(logging.ERROR, "no healthy vpn-shoot; keeping routes where they are", {
                "primary": self.selector.primary,
                "states": {j: v.state.value for j, v in self.probing.views().items()},
            })
        if self.selector.stranded != was_stranded:
            self._metric("stranded", "set", 1 if self.selector.stranded else 0)

    def _switched(self, switch: Switch) -> None:
        self._log(logging.WARNING, "primary switched", {
            "old": switch.old, "new": switch.new, "reason": switch.reason, "device": self._tunnel(switch.new),
        })
        self._metric("switches", "inc", 1, (switch.reason,))
        self._metric("primary", "set", switch.new)
        self.retry_at = float("-inf")  # a new primary is worth writing at once
        self._want_routes()

    def _bond_failing_over(self, failover: str, link: LinkFacts) -> None:
        self._metric("bond_failovers", "inc", 1, (failover,))
        if failover != SLAVE_GAINED_CARRIER:  # a client reconnecting interrupts no path
            self.probing.bond_moved(self.now)
        hold = self.config.failover_hold
        if hold <= 0:
            return
        until = self.now + hold
        self.probing.hold(until)
        if self.selector is not None:
            self.selector.hold(until)
        if self.log_limit.allow(("bond", failover)) is not None:
            self._log(logging.INFO, "bond failing over; no vpn-shoot is called down while the paths settle",
                      {"event": failover, "device": link.name, "hold_seconds": hold})

    # --- routes ------------------------------------------------------------------

    def _want_routes(self) -> None:
        self.routes_wanted = True

    def _start_route_work(self) -> None:
        """One read-then-write at a time; a failure waits for its backoff."""
        if not self.routes_wanted or self.route_work is not None or self.now < self.retry_at:
            return
        primary = self.primary
        if primary is None:
            return
        self.routes_wanted = False
        self.route_work = ReadRoutes(primary)
        self._out.append(self.route_work)

    def _routes_consistent(self, primary: int, oif: int) -> None:
        self.applied_primary, self.applied_oif = primary, oif
        self.backoff.reset()
        self.retry_at = float("-inf")
        if not self.routes_ok:
            self.routes_ok = True
            self.route_problem = ""
            self._metric("routes_consistent", "set", 1)

    def _route_failure(self, problem: str) -> None:
        if self.routes_ok or self.route_problem != problem:
            self._log(logging.ERROR, "route sync failed; retrying", {"problem": problem})
        if self.routes_ok:
            self._metric("routes_consistent", "set", 0)
        self.routes_ok = False
        self.route_problem = problem
        # Keep at it until the whole set points one way.
        self.retry_at = self.now + self.backoff.next()
        self._want_routes()

    # --- pinning ------------------------------------------------------------------

    def _start_pin_work(self) -> None:
        """One pinning change at a time, once the choice differs from what the kernel holds."""
        if not self.pins.on or self.pin_work is not None or self.now < self.pin_retry_at:
            return
        waiting = self._waiting()
        healthy = [j for j, view in self.probing.views().items() if view.state.healthy and j not in waiting]
        wanted = self.pins.wanted(self.primary, healthy, self._leaving_now(), self.now)
        applied = self.pins.applied
        if wanted is None or (wanted == applied and not self.pin_recheck):
            return
        self.pin_recheck = False
        before = applied.refused if applied is not None else frozenset()
        self.pin_work = ApplyPinning(wanted, close=wanted.refused - before, allow=before - wanted.refused)
        self._out.append(self.pin_work)

    def _on_PinningApplied(self, event: PinningApplied) -> None:
        self.pin_work = None
        old, self.pins.applied = self.pins.applied, event.choice
        self.pin_backoff.reset()
        self.pin_retry_at = float("-inf")
        if self.pin_problem:
            self.pin_problem = ""
            self._metric("pinning_consistent", "set", 1)
        for j, count in event.closed.items():
            self._metric("connections_closed", "inc", count, (j,))
            self._log(logging.WARNING, "vpn-shoot gone: its pinned connections closed", {
                "target": j, "connections": count, "down_seconds": round(self.now - self.pins.down_since.get(j, self.now), 3),
            })
        if old is None or old.new_to != event.choice.new_to:
            for j in range(len(self.config.targets)):
                self._metric("new_connections_target", "set", 1 if j in event.choice.new_to else 0, (j,))
            self._log(logging.INFO, "new connections pinned", {"targets": list(event.choice.new_to)})
        for j in sorted((old.refused if old else frozenset()) - event.choice.refused):
            self._log(logging.INFO, "vpn-shoot back: connections allowed again", {"target": j})

    def _on_PinningFailed(self, event: PinningFailed) -> None:
        self.pin_work = None
        problem = f"connection pinning not applied: {event.problem}"
        if problem != self.pin_problem:
            self._log(logging.ERROR, "pinning change failed; retrying", {"problem": event.problem})
        if not self.pin_problem:
            self._metric("pinning_consistent", "set", 0)
        self._metric("pinning_errors", "inc")
        self.pin_problem = problem
        self.pin_recheck = True  # the kernel may hold part of it: write the whole choice again
        self.pin_retry_at = self.now + self.pin_backoff.next()

    # --- output helpers ------------------------------------------------------------

    def _export_state(self, j: int) -> None:
        state = self.probing.views()[j].state
        self._metric("target_state", "state", state.value, (j,))
        self._metric("target_up", "set", 1 if state.healthy else 0, (j,))

    def _tunnel(self, j: int) -> str:
        names = self.config.tunnel_names
        return names[j] if j < len(names) else f"{self.config.bond_device}-ip6tnl{j}"

    def _log(self, level: int, message: str, fields: dict) -> None:
        self._out.append(Log(level, message, fields))

    def _metric(self, name: str, op: str, value: float | str = 1, labels: tuple = ()) -> None:
        self._out.append(Metric(name, op, value, labels))
