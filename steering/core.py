"""Which OpenVPN server this pod's bond uses (pure, clock passed in): events in, effects out.

Every pod sends a beacon through each server it is connected to, every
``beacon_interval``, listing the pods it hears through that server
(``beacon.py``). From the beacons it hears, a pod knows, for each server, which
of its **peers** (kube-apiservers for a vpn-shoot, vpn-shoots for a
kube-apiserver: the pods its traffic goes to) it can reach through it *both
ways*: it hears the peer there, and the peer hears it there (a one-way black
hole breaks either). Data flows exactly along these paths, because beacons
ride the same OpenVPN connections. Only evidence counts against a server: the
peer keeps speaking, or keeps hearing us, through another one. Beacons late
through every server (a busy node, a stalled pod) move nobody.

The rule, evaluated on every beacon, bond change and tick:

* stay on the server in use while no other server reaches more peers;
* move to one that reaches more, once that has held ``confirm_unreachable``
  when the server in use reaches nobody (a black hole: nobody heard for
  ``dead_after``), ``confirm_fewer`` when it reaches some (a peer whose own
  client to this server broke);
* go where most peers are once that server reaches as many peers as ours
  and has for ``settle`` (the fleet converges on one server);
* else move back to the home server (server 0, vpn2's ``primary tap0``) once
  it reaches every peer and has done so for ``settle``: after a server
  returns, every peer's clients reconnect one by one, seconds apart;
* nothing while no peer is known (vpn2 peers send no beacons): the kernel's
  behaviour, vpn2's, stays.

A move is a write of the bond's ``primary`` (with vpn2's ``primary_reselect
always`` the bond moves to it at once and comes back to it when it regains
carrier). The same write, without a move, keeps the bond where it is when the
kernel failed over on a carrier loss, so it does not fail back on its own when
that server returns. Moves at different instants cost nothing with
split-tolerant bonds (``bonding setup``): a peer reaches this pod through any
server both are connected to, not only through the one its bond uses.

A pod with no peer reachable through the server in use while peers are known
is *alone*: readiness says so.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from ipaddress import IPv6Address

from bonding.plan import AddressPlan
from daemonkit.effects import Log, Metric
from steering.beacon import Beacon

HOME = 0

# Why the bond moved (metric label).
CARRIER = "carrier"  # the kernel left a slave that lost carrier
UNREACHABLE = "unreachable"  # we left a server through which no peer answered
FEWER_PEERS = "fewer-peers"  # we left a server that reached fewer peers than another
FAIL_BACK = "fail-back"  # we went home after it had reached every peer for a while
JOIN = "join"  # we went where most peers are, as good as ours for a while
KERNEL = "kernel"  # the kernel moved for another reason (a vpn2 fail-back, someone else)
MOVE_REASONS = (CARRIER, UNREACHABLE, FEWER_PEERS, FAIL_BACK, JOIN, KERNEL)


@dataclass(frozen=True)
class SteeringConfig:
    me: IPv6Address
    plan: AddressPlan
    servers: int
    beacon_interval: float = 0.2
    dead_after: float = 0.6  # a peer not heard through a server this long is unreachable there
    # How long another server must reach more peers before we move: briefly when ours
    # reaches none (a black hole), longer when it still reaches some (one peer's client
    # reconnecting, beacons late on a busy node).
    confirm_unreachable: float = 0.1
    confirm_fewer: float = 0.5
    # A server we move to must have reached that many peers for this long: one that just
    # came back, or just stalled, is no refuge (its clients' handshakes load the node).
    proven: float = 2.0
    settle: float = 3.0  # home must reach every peer this long before we go back
    min_dwell: float = 1.0  # no move of ours sooner than this after the last one
    forget_after: float = 30.0  # a peer not heard at all this long is no peer any more

    @property
    def seed_side(self) -> bool:
        return self.plan.seed_client_index(self.me) is not None


# --- events ----------------------------------------------------------------------


@dataclass(frozen=True)
class BeaconHeard:
    now: float
    tap: int  # the tap (server) it arrived on
    beacon: Beacon


@dataclass(frozen=True)
class BondSeen:
    """This pod's bond: servers whose tap has carrier, the server in use, the primary."""

    now: float
    carriers: frozenset[int]
    active: int | None
    primary: int | None


@dataclass(frozen=True)
class Tick:
    now: float


Event = BeaconHeard | BondSeen | Tick

# --- effects -------------------------------------------------------------------


@dataclass(frozen=True)
class SendBeacon:
    beacon: Beacon


@dataclass(frozen=True)
class SetPrimary:
    """Write the bond's primary: a move when ``move``, else only to stop a fail-back."""

    server: int
    move: bool
    reason: str


Effect = SendBeacon | SetPrimary | Log | Metric


class ServerSteering:
    def __init__(self, config: SteeringConfig, now: float):
        self.config = config
        self.now = now
        self.heard_at: dict[tuple[IPv6Address, int], float] = {}
        self.beacons: dict[tuple[IPv6Address, int], Beacon] = {}
        self.last_heard: dict[IPv6Address, float] = {}
        self.peer_active: dict[IPv6Address, int | None] = {}  # the server each peer's bond uses
        self.peer_home_ok: dict[IPv6Address, bool] = {}  # each peer reaches all its peers through home
        self.carriers: frozenset[int] = frozenset()
        self.active: int | None = None
        self.primary: int | None = None
        self.bond_known = False
        self.seq = 0
        self.next_beacon = now
        self.better_since: float | None = None  # another server reaches more peers since
        self.calm_since: float | None = None  # as good a server as ours, where we would rather be, since
        self.calm_target: int | None = None
        self.requested: tuple[int, str] | None = None  # a move we asked for, not seen yet
        self.last_move = float("-inf")  # ours
        self.moved_at = now  # the bond's last change of server, whoever made it
        self.draining = False
        self.history: dict[int, deque[tuple[float, int]]] = {}  # server → (time, peers reachable)
        self.started = now
        self._out: list[Effect] = []

    # --- the one entry point ----------------------------------------------------

    def handle(self, event: Event) -> list[Effect]:
        self.now = max(self.now, event.now)
        if isinstance(event, BeaconHeard):
            self._heard(event)  # decided on at the next tick: beacons come in bursts
        else:
            if isinstance(event, BondSeen):
                self._bond(event)
            self._beacons_due()
            self._decide()
        out, self._out = self._out, []
        return out

    def next_wakeup(self) -> float:
        """When to come back with a Tick: the next beacon (due now if overdue), or sooner a
        wait running out or a peer going stale; waits already run out are retried with the
        beacons (a move may be held back by ``min_dwell`` or an unproven target)."""
        config = self.config
        waits = [at + config.dead_after for at in self.heard_at.values()]  # a black hole shows here first
        if self.better_since is not None:
            waits.append(max(self.better_since + config.confirm_unreachable, self.last_move + config.min_dwell))
        if self.calm_since is not None:
            waits.append(max(self.calm_since + config.settle, self.last_move + config.min_dwell))
        return min([self.next_beacon, *(w for w in waits if w > self.now)])

    # --- what the daemons read ----------------------------------------------------

    def peers(self) -> set[IPv6Address]:
        """The pods our traffic goes to that we heard lately, through any server."""
        horizon = self.now - self.config.forget_after
        return {peer for peer, at in self.last_heard.items() if at >= horizon}

    def reach(self, server: int) -> set[IPv6Address]:
        """Peers we can talk to through ``server``, as far as the beacons show."""
        return {peer for peer in self.peers() if self._through(peer, server)}

    def _through(self, peer: IPv6Address, server: int) -> bool:
        """Whether ``peer`` and we reach each other through ``server``.

        Only evidence counts against a server: the peer keeps speaking through another
        server while it is silent through this one, or it hears us through another
        server but not through this one. A peer silent everywhere (a stalled node, a
        pod going away) says nothing about the servers.
        """
        config, me = self.config, self.config.me
        elsewhere = [
            (self.heard_at[(peer, other)], self.beacons[(peer, other)])
            for other in range(config.servers) if other != server and (peer, other) in self.heard_at
        ]
        latest_elsewhere = max((at for at, _ in elsewhere), default=None)
        at = self.heard_at.get((peer, server))
        if at is None:  # never heard through it
            return latest_elsewhere is None
        if self.now - at > config.dead_after:  # silent through it: against it only while the peer speaks elsewhere
            return (
                latest_elsewhere is None
                or self.now - latest_elsewhere > config.dead_after  # silent everywhere: says nothing
                or latest_elsewhere < at + config.dead_after / 2
            )
        if me in self.beacons[(peer, server)].heard:
            return True
        # It does not hear us through this server: does it hear us through another?
        return not any(me in beacon.heard and self.now - heard <= config.dead_after for heard, beacon in elsewhere)

    def alive(self, peer: IPv6Address, within: float) -> bool:
        """``peer`` was heard through some server in the last ``within`` seconds."""
        return self.last_heard.get(peer, float("-inf")) >= self.now - within

    def alone(self) -> str | None:
        """Why this pod cannot reach any peer through the server it uses, or None."""
        peers = self.peers()
        if not peers or self.active is None or self.reach(self.active):
            return None
        kind = "kube-apiservers" if not self.config.seed_side else "vpn-shoots"
        return f"alone on server {self.active}: none of the {len(peers)} {kind} heard lately is reachable through it"

    # --- events ---------------------------------------------------------------------

    def _heard(self, event: BeaconHeard) -> None:
        beacon = event.beacon
        if event.tap != beacon.server:
            # The servers are bridged, or a tap is wired to the wrong server.
            self._metric("beacons_rejected", "inc", 1, ("crossed",))
            return
        self._metric("beacons_received", "inc", 1, (event.tap,))
        key = (beacon.sender, event.tap)
        self.heard_at[key] = self.now
        self.beacons[key] = beacon
        if self._is_peer(beacon.sender):
            self.last_heard[beacon.sender] = self.now
            self.peer_active[beacon.sender] = beacon.active
            self.peer_home_ok[beacon.sender] = beacon.home_reaches_all

    def _is_peer(self, address: IPv6Address) -> bool:
        plan = self.config.plan
        if self.config.seed_side:
            return plan.shoot_client_index(address) is not None
        return plan.seed_client_index(address) is not None

    def _bond(self, event: BondSeen) -> None:
        before, had = self.active, self.carriers
        first = not self.bond_known
        self.carriers, self.active, self.primary = event.carriers, event.active, event.primary
        self.bond_known = True
        if event.carriers != had or event.active != before:
            self.next_beacon = self.now  # tell the peers at once
        if first or event.active == before:
            if first:
                self._metric("server_in_use", "set", -1 if event.active is None else event.active)
            return
        self.moved_at = self.now
        self._metric("server_in_use", "set", -1 if event.active is None else event.active)
        requested, self.requested = self.requested, None
        if requested is not None and requested[0] == event.active:
            return  # our own move, counted when asked for
        reason = CARRIER if before is not None and before not in event.carriers else KERNEL
        self._metric("server_moves", "inc", 1, (reason,))
        self._log(logging.INFO, "bond moved", {"from": before, "to": event.active, "reason": reason})

    # --- decisions --------------------------------------------------------------------

    def _beacons_due(self) -> None:
        if self.now < self.next_beacon or not self.bond_known:
            return
        step = self.config.beacon_interval
        self.next_beacon = max(self.next_beacon + step, self.now + step / 2)
        self.seq += 1
        fresh = self.now - self.config.dead_after
        peers = self.peers()
        home_ok = bool(peers) and HOME in self.carriers and len(self.reach(HOME)) == len(peers)
        for server in sorted(self.carriers):
            heard = frozenset(p for (p, s), at in self.heard_at.items() if s == server and at >= fresh)
            beacon = Beacon(self.config.me, server, self.active, self.carriers, heard, self.seq, self.draining, home_ok)
            self._out.append(SendBeacon(beacon))

    def _decide(self) -> None:
        active = self.active
        peers = self.peers()
        if active is not None and peers and active not in self.carriers and self.carriers and self.requested is None:
            # The tap in use lost carrier: the kernel leaves it only at its next link check
            # (miimon, up to 100 ms); the primary write moves the bond now.
            self._move(self._pick(sorted(self.carriers), self._using(peers)), CARRIER, {})
            return
        if active is None or not peers or active not in self.carriers:
            self.better_since = self.calm_since = None
            self.history.clear()
            return  # nothing known: the kernel decides, as with vpn2
        scores = {server: len(self.reach(server)) for server in self.carriers}
        for server in range(self.config.servers):
            self._metric("peers_reachable", "set", scores.get(server, 0), (server,))
            self._remember(server, scores.get(server, 0))
        best = max(scores.values())
        using = self._using(peers)
        if scores[active] < best:
            self.calm_since = None
            if self.better_since is None:
                self.better_since = self.now
            unreachable = scores[active] == 0
            wait = self.config.confirm_unreachable if unreachable else self.config.confirm_fewer
            proven = [s for s, score in scores.items() if score == best and self._proven(s, best)]
            if proven and self._may_move(self.better_since, wait):
                self._move(self._pick(proven, using), UNREACHABLE if unreachable else FEWER_PEERS, scores)
            return
        self.better_since = None
        target, reason = self._calm_target(scores, best, peers, using)
        if target is None:
            self.calm_since = None
        elif self.calm_since is None or self.calm_target != target:
            self.calm_since, self.calm_target = self.now, target
        elif self._may_move(self.calm_since, self.config.settle):
            self._move(target, reason, scores)
            return
        if self.requested is not None and self.now - self.last_move > 2 * self.config.min_dwell:
            self.requested = None  # the bond did not follow (no carrier there any more)
        if self.primary != active and self.requested is None and self._stay(peers):
            # The kernel failed over: keep it here when the old server comes back.
            self._out.append(SetPrimary(active, move=False, reason="stay"))
            self.primary = active

    def _stay(self, peers: set[IPv6Address]) -> bool:
        """After the kernel failed over from the primary: stay here when it comes back,
        unless only our own client to it broke (the peers are still connected to it).
        Then the kernel's own move back, the moment our client reconnects, takes us
        back to the peers at once (split tolerance makes either way work meanwhile)."""
        lost = self.primary
        if lost is None or lost in self.carriers:
            return True
        connected = [p for p in peers if (p, lost) in self.beacons and lost in self._latest(p).carriers]
        return len(connected) * 2 <= len(peers)

    def _latest(self, peer: IPv6Address) -> Beacon:
        return max(
            ((self.heard_at[(peer, s)], self.beacons[(peer, s)]) for s in range(self.config.servers) if (peer, s) in self.beacons),
            key=lambda item: item[0],
        )[1]

    def _calm_target(self, scores: dict[int, int], best: int, peers: set[IPv6Address], using: dict[int, int]):
        """Where to go although the server in use is as good as any; (None, "") to stay.

        Home, when it reaches every peer and every peer says the same of home (so they
        all can come); else where most peers are. Home wins so that both sides of the
        fleet go back together after a server returns.
        """
        active = self.active
        home_for_all = scores.get(HOME) == best == len(peers) and all(self.peer_home_ok.get(p) for p in peers)
        if home_for_all:
            return (HOME, FAIL_BACK) if active != HOME else (None, "")
        busiest = max((s for s, score in scores.items() if score == best), key=lambda s: (using.get(s, 0), s == HOME))
        if busiest != active and using.get(busiest, 0) > using.get(active, 0):
            return busiest, JOIN
        return None, ""

    def _remember(self, server: int, score: int) -> None:
        history = self.history.setdefault(server, deque())
        history.append((self.now, score))
        while len(history) > 1 and history[1][0] <= self.now - self.config.proven:
            history.popleft()

    def _proven(self, server: int, score: int) -> bool:
        """``server`` has reached at least ``score`` peers for ``proven`` seconds (two beacon
        intervals on a pod younger than that: everything it sees is new)."""
        history = self.history.get(server)
        young = self.now - self.started < self.config.proven
        window = 2 * self.config.beacon_interval if young else self.config.proven
        return bool(history) and history[0][0] <= self.now - window and min(s for _, s in history) >= score

    def _may_move(self, since: float, wait: float) -> bool:
        return self.now - since >= wait and self.now - self.last_move >= self.config.min_dwell

    def _using(self, peers: Iterable[IPv6Address]) -> dict[int, int]:
        """How many peers' bonds use each server."""
        using: dict[int, int] = {}
        for peer in peers:
            server = self.peer_active.get(peer)
            if server is not None:
                using[server] = using.get(server, 0) + 1
        return using

    def _pick(self, candidates: list[int], using: dict[int, int]) -> int:
        """Among equally good servers: the one most peers use, then home, then the lowest."""
        return max(candidates, key=lambda s: (using.get(s, 0), s == HOME, -s))

    def _move(self, server: int, reason: str, scores: dict[int, int]) -> None:
        self.better_since = self.calm_since = None
        self.last_move = self.now
        self.requested = (server, reason)
        self.primary = server
        self._out.append(SetPrimary(server, move=True, reason=reason))
        self._metric("server_moves", "inc", 1, (reason,))
        self._log(logging.WARNING if reason in (UNREACHABLE, FEWER_PEERS) else logging.INFO, "moving to server", {
            "from": self.active, "to": server, "reason": reason,
            "peers_reachable": {str(s): n for s, n in sorted(scores.items())}, "peers": len(self.peers()),
        })

    def _log(self, level: int, message: str, fields: dict) -> None:
        self._out.append(Log(level, message, fields))

    def _metric(self, name: str, op: str, value: float | str = 1, labels: tuple = ()) -> None:
        self._out.append(Metric(name, op, value, labels))
