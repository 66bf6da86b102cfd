"""When to probe which vpn-shoot, and what the answers say (pure, clock passed in).

A probe policy owns the health of every target and the schedule of its
probes. The core asks it, at every wake-up, which probes are due and which
verdicts changed; it never sleeps or reads a clock itself. ``Probing`` is
ours; a policy with vpn2's timing (benchmarks/vpn2_profile.py) plugs into
the same core.

Ours: each target is probed on a shared time grid (the loops of all targets
wake together: on small machines each wake-up, not each packet, costs CPU),
every ``interval`` while healthy and every ``burst_interval`` once a reply is
late or the target is not known yet. A probe is judged only if no answer came
by its deadline (``late_after``, at most the interval); the next probe goes
out on the grid after the answer or the judgement.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from path_controller.probe import ProbeTiming, TargetHealth, Transition
from path_controller.selection import TargetView


class ProbePolicy(Protocol):
    """What the core needs of a probe policy."""

    def views(self) -> Mapping[int, TargetView]: ...

    def step(self, now: float) -> tuple[list[int], list[tuple[int, Transition]]]:
        """(targets to probe now, verdicts that changed) at ``now``."""

    def answered(self, target: int, rtt: float, now: float) -> list[tuple[int, Transition]]: ...

    def next_wakeup(self) -> float: ...

    def hold(self, until: float) -> None:
        """Call no target down before ``until`` (this node's bond is failing over)."""

    def bond_moved(self, now: float) -> None:
        """This node's bond changed server at ``now``: a silence every path shares."""

    def witness(self, target: int, now: float, hold: float, longest: float) -> None:
        """Another source says ``target`` is alive at ``now``: no down verdict for ``hold``,
        at most ``longest`` after its current silence began."""

    def gauges(self, target: int, now: float) -> dict[str, float]:
        """Metric name → value describing the target's timing (may be empty)."""


@dataclass
class _Schedule:
    next_send: float
    sent_at: float | None = None
    judge_at: float | None = None  # deadline of the outstanding probe, None once answered or judged


class Probing:
    """Our policy: a TargetHealth per target, probed independently on a shared grid."""

    def __init__(self, timing: ProbeTiming, targets: int, now: float):
        self.timing = timing
        self.health = {j: TargetHealth(timing, now) for j in range(targets)}
        self.schedule = {j: _Schedule(on_grid(now, h.next_interval)) for j, h in self.health.items()}

    def views(self) -> Mapping[int, TargetHealth]:
        return self.health

    def step(self, now: float) -> tuple[list[int], list[tuple[int, Transition]]]:
        verdicts = []
        sends = []
        for j, slot in self.schedule.items():
            health = self.health[j]
            if slot.judge_at is not None and now >= slot.judge_at:
                if (transition := health.tick(now)) is not None:
                    verdicts.append((j, transition))
                self._done(slot, health, now)
            if slot.judge_at is None and now >= slot.next_send:
                sends.append(j)
                health.sent(now)
                slot.sent_at = now
                slot.judge_at = now + min(health.late_after, health.next_interval)
        return sends, verdicts

    def answered(self, target: int, rtt: float, now: float) -> list[tuple[int, Transition]]:
        health = self.health[target]
        # The others are read only when an answer turns out to be a stall.
        others = (h for k, h in self.health.items() if k != target)
        transition = health.answered(rtt, now, others)
        slot = self.schedule[target]
        if slot.judge_at is not None:
            self._done(slot, health, now)
        return [(target, transition)] if transition is not None else []

    def _done(self, slot: _Schedule, health: TargetHealth, now: float) -> None:
        """The outstanding probe is answered or judged: the next one goes out on the grid."""
        slot.judge_at = None
        step = health.next_interval
        slot.next_send = max(on_grid(slot.sent_at + step, step), now)

    def next_wakeup(self) -> float:
        return min(
            slot.judge_at if slot.judge_at is not None else slot.next_send for slot in self.schedule.values()
        )

    def hold(self, until: float) -> None:
        for health in self.health.values():
            health.hold(until)

    def bond_moved(self, now: float) -> None:
        for health in self.health.values():
            health.bond_moved_at = now

    def witness(self, target: int, now: float, hold: float, longest: float) -> None:
        health = self.health[target]
        if health.silent_since != float("inf"):
            health.hold(min(now + hold, health.silent_since + longest))

    def gauges(self, target: int, now: float) -> dict[str, float]:
        health = self.health[target]
        return {"dead_interval": health.dead_after(now), "late_after": health.late_after}


def on_grid(t: float, step: float) -> float:
    """``t`` rounded to a multiple of ``step``: schedules with the same step wake together."""
    return round(t / step) * step
