"""Which vpn-shoot carries this kube-apiserver's traffic (pure, no I/O).

* Sticky: the primary changes only when it is DOWN and another target is
  healthy; a recovered target does not take traffic back (no flapping).
* Evidence: the other target must have answered a probe sent while the
  primary was silent, and the primary's probe sent with it must have stayed
  unanswered for longer (1.5 s when the other was silent too, or this
  node's bond changed server: after a server event the bonds move, each on its own). When
  every target went silent together (this node stalled, a server failed over)
  no path is better than the primary; switching would only add a route change.
* Spread: each kube-apiserver has its own preference order over the targets,
  a rotation fixed by a hash of its identity, so pods spread over the
  vpn-shoots deterministically instead of at random.
* Start-up: the first choice waits for the preferred target's verdict (up
  to ``startup_grace``) instead of taking whichever answered first; an
  adopted primary (routes found in the kernel) is kept like any other.
* Never blackhole: with no healthy target the routes stay where they are.
* Hold: while this node's bond fails over (``hold``) the primary stays, even
  if it was already down: every path was interrupted and they come back one
  by one, so the first one back is no better (seen after a black hole).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from path_controller.probe import Health

INITIAL = "initial"  # the first primary (nothing to adopt)
PRIMARY_DOWN = "primary down"
LEAVING = "leaving"  # the primary's vpn-shoot drains (SIGTERM): new connections go elsewhere
SWITCH_REASONS = (INITIAL, PRIMARY_DOWN, LEAVING)


def preference_order(identity: str, targets: int) -> list[int]:
    """Rotation of ``range(targets)`` starting at sha256(identity) mod targets."""
    start = int.from_bytes(hashlib.sha256(identity.encode()).digest()[:4], "big") % targets
    return [(start + k) % targets for k in range(targets)]


class TargetView(Protocol):
    """What selection reads of a target's health (probe.TargetHealth has it)."""

    state: Health

    def outlasted_by(self, other: TargetView, now: float) -> bool: ...


@dataclass(frozen=True)
class Switch:
    old: int | None
    new: int
    reason: str  # one of SWITCH_REASONS


class PathSelector:
    def __init__(self, order: list[int], now: float, startup_grace: float, adopted: int | None = None):
        self.order = order
        self.primary = adopted
        self.started = now
        self.startup_grace = startup_grace
        self.stranded = False  # primary down and nothing healthy to go to
        self.hold_until = float("-inf")

    def hold(self, until: float) -> None:
        """Keep the primary until ``until`` (this node's bond is failing over)."""
        self.hold_until = max(self.hold_until, until)

    def decide(
        self, targets: Mapping[int, TargetView], now: float, leaving: frozenset[int] = frozenset(),
        waiting: frozenset[int] = frozenset(),
    ) -> Switch | None:
        """A Switch when the primary must change, else None. ``leaving``: vpn-shoots that
        drain; they take no new primary, and a primary that drains is left for a healthy one.
        ``waiting``: vpn-shoots that answer but do not serve us yet; they count as unhealthy."""
        states = {j: Health.DOWN if j in waiting and j != self.primary else t.state for j, t in targets.items()}
        if self.primary is None:
            return self._first_choice(states, now, leaving)
        if states[self.primary] is not Health.DOWN:
            self.stranded = False
            if self.primary in leaving:
                staying = [j for j in self.order if j not in leaving and states[j].healthy]
                if staying:
                    return self._switch(staying[0], LEAVING)
            return None
        # Those that stay first; a leaving one is still better than none.
        healthy = sorted((j for j in self.order if j != self.primary and states[j].healthy), key=lambda j: j in leaving)
        self.stranded = not healthy
        if now < self.hold_until:
            return None
        primary = targets[self.primary]
        for candidate in healthy:
            if primary.outlasted_by(targets[candidate], now):
                return self._switch(candidate, PRIMARY_DOWN)
        return None  # the others were silent too: wait until one answers while the primary does not

    def _first_choice(self, states: Mapping[int, Health], now: float, leaving: frozenset[int]) -> Switch | None:
        in_grace = now - self.started < self.startup_grace
        for candidate in sorted(self.order, key=lambda j: j in leaving):
            state = states[candidate]
            if state.healthy:
                return self._switch(candidate, INITIAL)
            if state is Health.UNKNOWN and in_grace:
                return None  # wait for the preferred target's verdict
        return None

    def _switch(self, new: int, reason: str) -> Switch:
        switch = Switch(self.primary, new, reason)
        self.primary = new
        return switch
