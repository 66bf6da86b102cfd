"""Discrete-event simulation of one probe loop (mirrors PathController._probe_loop)
over a lossy, delaying path, driving the real TargetHealth with simulated time."""

from __future__ import annotations

import heapq
import random
from dataclasses import dataclass, field

from path_controller.probe import Health, ProbeTiming, TargetHealth, Transition


@dataclass
class Path:
    loss_each_way: float = 0.0
    rtt: float = 0.002
    jitter: float = 0.0
    dead_from: float = float("inf")  # no answers to probes sent after this
    alive_from: float = float("inf")  # answers again from here


@dataclass
class SimResult:
    transitions: list[tuple[float, Transition]] = field(default_factory=list)
    sent: int = 0

    def times_entering(self, state: Health) -> list[float]:
        return [t for t, tr in self.transitions if tr.new is state]


def simulate(timing: ProbeTiming, path: Path, duration: float, seed: int = 1, stall: tuple[float, float] | None = None):
    """Run for ``duration`` simulated seconds; ``stall`` = (start, length) freezes the loop."""
    rng = random.Random(seed)
    health = TargetHealth(timing, 0.0)
    result = SimResult()
    events: list[tuple[float, int, str]] = []  # (time, order, kind)
    order = 0

    def push(t: float, kind: str) -> None:
        nonlocal order
        order += 1
        heapq.heappush(events, (t, order, kind))

    def record(t: float, transition: Transition | None) -> None:
        if transition is not None:
            result.transitions.append((t, transition))

    push(0.0, "send")
    pending_sent_at: dict[str, float] = {}
    answered_since_send = False
    while events:
        t, _, kind = heapq.heappop(events)
        if t > duration:
            break
        if stall and stall[0] <= t < stall[0] + stall[1] and kind != "reply":
            push(stall[0] + stall[1], kind)  # the loop was not running
            continue
        if kind == "send":
            result.sent += 1
            health.sent(t)
            dead = path.dead_from <= t < path.alive_from
            if not dead and rng.random() >= path.loss_each_way and rng.random() >= path.loss_each_way:
                rtt = path.rtt + rng.random() * path.jitter
                push(t + rtt, f"reply:{t!r}")
            pending_sent_at["last"] = t
            answered_since_send = False
            push(t + min(health.late_after, health.next_interval), "judge")
        elif kind == "judge":
            # The loop is woken early by an answer and then skips judging.
            if not answered_since_send:
                record(t, health.tick(t))
            sent_at = pending_sent_at["last"]
            step = health.next_interval
            push(max(t, round((sent_at + step) / step) * step), "send")
        elif kind.startswith("reply:"):
            sent_at = float(kind.split(":", 1)[1])
            answered_since_send = True
            record(t, health.answered(t - sent_at, t))
    return result, health
