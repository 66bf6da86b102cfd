"""A whole fleet in simulated time: kube-apiservers and vpn-shoots, each with a
kernel bond model and (unless it runs vpn2) the real steering core
(``steering.core.ServerSteering``), two OpenVPN servers, and faults: a server
killed or back, black-holed (both ways or one), one pod's client to a server
broken. It measures who can reach whom, all the time.

The bond model is the kernel's active-backup behaviour as measured in UML
(reference/kernel-sandbox.md, docs/server-steering.md): failover when the
active slave loses carrier; with ``primary_reselect always`` a move to the
primary whenever it regains carrier or is written. A path a → b works when a's
bond sends through a server that forwards, b is connected to that server, and
b takes the frame: on any slave if its bond is split-tolerant, else only on
its active one.
"""

from __future__ import annotations

import heapq
import random
from dataclasses import dataclass, field
from ipaddress import IPv6Address

from bonding.plan import AddressPlan
from steering.core import BeaconHeard, BondSeen, SendBeacon, ServerSteering, SetPrimary, SteeringConfig, Tick

PLAN = AddressPlan.from_text()
LATENCY = 0.005  # one way through a server


@dataclass
class Pod:
    name: str
    address: IPv6Address
    seed: bool
    ours: bool = True  # runs our daemon (steering, split-tolerant bond); else vpn2
    carrier: list[bool] = field(default_factory=lambda: [False, False])
    active: int | None = None
    primary: int = 0
    steering: ServerSteering | None = None
    moves: int = 0
    started: bool = True

    @property
    def split_tolerant(self) -> bool:
        return self.ours


class Fleet:
    def __init__(self, apiservers: int = 3, shoots: int = 2, *, vpn2: tuple[str, ...] = (), seed: int = 1,
                 steering_ok: bool = True, config: dict | None = None, later: dict[str, float] | None = None):
        """``vpn2``: pods that run vpn2 (no steering, vpn2's bond); ``later``: pod → when it starts."""
        self.rng = random.Random(seed)
        self.now = 0.0
        self.server_up = [True, True]
        self.server_passes = [True, True]  # False: black hole (carrier stays up)
        self.leg_passes: dict[tuple[str, int], bool] = {}  # (pod, server) -> False: that leg black-holed
        self.stalls: list[tuple[float, float]] = []  # every beacon in [from, until) arrives at until
        self.pods: dict[str, Pod] = {}
        for k in range(apiservers):
            self._add(Pod(f"api{k}", PLAN.seed_client(0x100 + k), True), vpn2, steering_ok, config or {})
        for j in range(shoots):
            self._add(Pod(f"shoot{j}", PLAN.shoot_client(j), False), vpn2, steering_ok, config or {})
        self._queue: list = []
        self._order = 0
        self.samples: list[tuple[float, dict[str, bool]]] = []
        self.steering_ok, self.config = steering_ok, config or {}
        for pod in self.pods.values():
            self.start_pod(pod.name, (later or {}).get(pod.name, 0.0))
        self.at(0.0, self._sample)

    def start_pod(self, name: str, at: float) -> None:
        """The pod (re)starts at ``at``: a fresh daemon, its clients connect one by one."""
        pod = self.pods[name]

        def start() -> None:
            pod.started = True
            pod.carrier, pod.active, pod.primary = [False, False], None, 0
            if pod.ours and self.steering_ok:
                pod.steering = ServerSteering(SteeringConfig(pod.address, PLAN, 2, **self.config), self.now)
            for server in (0, 1):
                self._connect(pod, server, at=self.now + self.rng.uniform(0.0, 0.5))

        pod.started = False
        pod.steering = None
        self.at(at, start)

    def _add(self, pod: Pod, vpn2, steering_ok: bool, config: dict) -> None:
        pod.ours = pod.name not in vpn2
        self.pods[pod.name] = pod

    # --- time -------------------------------------------------------------------

    def at(self, t: float, action) -> None:
        self._order += 1
        heapq.heappush(self._queue, (t, self._order, action))

    def run(self, until: float) -> None:
        while self._queue and self._queue[0][0] <= until:
            t, _, action = heapq.heappop(self._queue)
            self.now = t
            action()
        self.now = until

    def _sample(self) -> None:
        self.samples.append((self.now, {pod.name: self.with_peers(pod) for pod in self.pods.values() if pod.started}))
        self.at(self.now + 0.01, self._sample)

    # --- the network ----------------------------------------------------------------

    def passes(self, pod: Pod, server: int) -> bool:
        """Frames between ``pod`` and ``server`` go through (connected, not black-holed)."""
        return (
            pod.carrier[server] and self.server_up[server] and self.server_passes[server]
            and self.leg_passes.get((pod.name, server), True)
        )

    def reaches(self, a: Pod, b: Pod) -> bool:
        s = a.active
        if s is None or not self.passes(a, s) or not self.passes(b, s):
            return False
        return b.split_tolerant or b.active == s

    def with_peers(self, pod: Pod) -> bool:
        """Both ways with every peer (vpn-shoots for a kube-apiserver, and the reverse)."""
        peers = [p for p in self.pods.values() if p.seed != pod.seed and p.started]
        return all(self.reaches(pod, p) and self.reaches(p, pod) for p in peers)

    # --- the kernel bond ---------------------------------------------------------------

    def _connect(self, pod: Pod, server: int, at: float) -> None:
        def up() -> None:
            if self.server_up[server] and pod.started:
                self._carrier(pod, server, True)
        self.at(at, up)

    def _carrier(self, pod: Pod, server: int, on: bool) -> None:
        if pod.carrier[server] == on:
            return
        pod.carrier[server] = on
        if not on and pod.active == server:
            others = [s for s in (0, 1) if pod.carrier[s]]
            self._activate(pod, pod.primary if pod.primary in others else (others[0] if others else None))
        elif on and (pod.active is None or server == pod.primary):
            self._activate(pod, server)
        self._bond_changed(pod)

    def _activate(self, pod: Pod, server: int | None) -> None:
        if pod.active != server:
            pod.active = server
            pod.moves += 1

    def _bond_changed(self, pod: Pod) -> None:
        if pod.steering is not None and pod.started:
            carriers = frozenset(s for s in (0, 1) if pod.carrier[s])
            self._drive(pod, BondSeen(self.now, carriers, pod.active, pod.primary))

    # --- the daemon -----------------------------------------------------------------------

    def _drive(self, pod: Pod, event) -> None:
        steering = pod.steering
        for effect in steering.handle(event):
            if isinstance(effect, SendBeacon):
                self._broadcast(pod, effect.beacon)
            elif isinstance(effect, SetPrimary):
                pod.primary = effect.server
                if pod.carrier[effect.server]:
                    self._activate(pod, effect.server)
                self.at(self.now + 0.001, lambda p=pod: self._bond_changed(p))
        wake = steering.next_wakeup()
        self.at(max(wake, self.now + 0.001), lambda p=pod, w=wake: self._tick(p, w))

    def _tick(self, pod: Pod, planned: float) -> None:
        if pod.steering is not None and pod.steering.next_wakeup() <= self.now + 1e-9:
            self._drive(pod, Tick(self.now))

    def _broadcast(self, sender: Pod, beacon) -> None:
        server = beacon.server
        if not self.passes(sender, server):
            return
        for pod in self.pods.values():
            if pod is not sender and pod.steering is not None:
                def deliver(p=pod) -> None:
                    if p.steering is not None and self.passes(p, server) and self.passes(sender, server):
                        self._drive(p, BeaconHeard(self.now, server, beacon))
                arrival = self.now + LATENCY + self.rng.uniform(0, 0.003)
                for start, end in self.stalls:
                    if start <= arrival < end:
                        arrival = end + self.rng.uniform(0, 0.05)
                self.at(arrival, deliver)

    # --- faults -------------------------------------------------------------------------------

    def stall(self, at: float, length: float) -> None:
        """A busy node: every beacon on the way in [at, at + length) arrives at the end."""
        self.stalls.append((at, at + length))

    def kill_server(self, server: int, at: float) -> None:
        def kill() -> None:
            self.server_up[server] = False
            for pod in self.pods.values():
                self._carrier(pod, server, False)
        self.at(at, kill)

    def start_server(self, server: int, at: float, reconnect: tuple[float, float] = (1.0, 6.0)) -> None:
        """Back at ``at``; every client reconnects on its own schedule (connect-retry 1 5)."""
        def start() -> None:
            self.server_up[server] = True
            for pod in self.pods.values():
                self._connect(pod, server, at=self.now + self.rng.uniform(*reconnect))
        self.at(at, start)

    def black_hole(self, server: int, at: float, until: float) -> None:
        self.at(at, lambda: self.server_passes.__setitem__(server, False))
        self.at(until, lambda: self.server_passes.__setitem__(server, True))

    def leg_black_hole(self, pod: str, server: int, at: float, until: float) -> None:
        self.at(at, lambda: self.leg_passes.__setitem__((pod, server), False))
        self.at(until, lambda: self.leg_passes.__setitem__((pod, server), True))

    def client_flap(self, pod: str, server: int, at: float, back_after: float) -> None:
        """One pod's own client to ``server`` restarts: carrier down, back ``back_after`` later."""
        self.at(at, lambda: self._carrier(self.pods[pod], server, False))
        self._connect(self.pods[pod], server, at=at + back_after)

    # --- figures ---------------------------------------------------------------------------------

    def longest_separation(self, since: float, until: float | None = None) -> dict[str, float]:
        """Per pod: the longest stretch without every peer both ways, within [since, until]."""
        longest = {name: 0.0 for name in self.pods}
        start: dict[str, float | None] = {name: None for name in self.pods}
        for t, ok in self.samples:
            if t < since or (until is not None and t > until):
                continue
            for name, with_peers in ok.items():
                if not with_peers and start[name] is None:
                    start[name] = t
                elif with_peers and start[name] is not None:
                    longest[name] = max(longest[name], t - start[name])
                    start[name] = None
        end = until if until is not None else self.now
        for name, began in start.items():
            if began is not None:
                longest[name] = max(longest[name], end - began)
        return longest

    def servers_in_use(self) -> dict[str, int | None]:
        return {name: pod.active for name, pod in self.pods.items() if pod.started}
