"""Health of one probed vpn-shoot: a clock-injected state machine with rise/fall.

Decisions rest on silence, not on single misses. A target is probed every
``interval``; once a reply is overdue (``late_after`` past the expected time)
it is SUSPECT and probed every ``burst_interval``. It is DOWN only when it has
been silent for ``dead_interval`` (at least 4 smoothed RTTs on slow paths)
*and* at least ``min_lost`` probes sent in that silence went unanswered. With
20 % loss each way a probe fails with p = 0.36; calling a target down needs
about 15 failures in a row (0.36^15 ≈ 2e-7), while a dead target is called
down about ``dead_interval`` after its last answer. It comes back UP after
``rise`` consecutive answers.

Time the daemon itself did not run (a stalled event loop) does not count as
silence: it cannot tell anything about the target.
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass
from typing import Final


class Health(enum.Enum):
    UNKNOWN = "unknown"  # no verdict yet (start-up)
    UP = "up"
    SUSPECT = "suspect"  # up, but a reply is overdue: probing in bursts
    DOWN = "down"
    RISING = "rising"  # down, answering again: counting towards rise

    @property
    def healthy(self) -> bool:
        return self in (Health.UP, Health.SUSPECT)


TRANSITIONS: Final[dict[Health, frozenset[Health]]] = {
    Health.UNKNOWN: frozenset({Health.UP, Health.DOWN}),
    Health.UP: frozenset({Health.SUSPECT, Health.DOWN}),
    Health.SUSPECT: frozenset({Health.UP, Health.DOWN}),
    Health.DOWN: frozenset({Health.RISING, Health.UP}),
    Health.RISING: frozenset({Health.UP, Health.DOWN}),
}


@dataclass(frozen=True)
class ProbeTiming:
    interval: float = 0.1
    burst_interval: float = 0.015
    dead_interval: float = 0.35
    min_lost: int = 12
    rise: int = 3
    late_after: float = 0.025
    # A path that recently answered after a long stall (OpenVPN's TCP
    # retransmitting) must stay silent this many times longer before it is down.
    stall_factor: float = 2.0
    stall_memory: float = 300.0


@dataclass(frozen=True)
class Transition:
    old: Health
    new: Health
    reason: str


class TargetHealth:
    """Feed it ``sent``, ``answered`` and ``tick``; read ``state`` and ``next_interval``."""

    def __init__(self, timing: ProbeTiming, now: float):
        self.timing = timing
        self.state = Health.UNKNOWN
        self.last_answer = now  # start of the current silence
        self.last_tick = now
        # Send times since the last answer; the most recent ones are all a decision needs.
        self.unanswered: deque[float] = deque(maxlen=max(64, 2 * timing.min_lost))
        self.consecutive_answers = 0
        self.srtt: float | None = None
        self.rttvar = 0.0
        self.stalls: deque[tuple[float, float]] = deque(maxlen=128)  # (when, rtt) of late answers

    # --- inputs -----------------------------------------------------------

    def sent(self, now: float) -> None:
        self.unanswered.append(now)
        self.last_tick = now  # we are running

    def answered(self, rtt: float, now: float) -> Transition | None:
        """A matching echo reply arrived (possibly late)."""
        if rtt > self.late_after:
            self.stalls.append((now, rtt))
        self._update_rtt(rtt)
        self.last_answer = self.last_tick = now
        self.unanswered.clear()
        self.consecutive_answers += 1
        if self.state in (Health.UNKNOWN, Health.DOWN, Health.RISING):
            if self.consecutive_answers >= self.timing.rise:
                return self._move(Health.UP, f"{self.consecutive_answers} answers in a row")
            if self.state is Health.DOWN:
                return self._move(Health.RISING, "answering again")
            return None
        if self.state is Health.SUSPECT:
            return self._move(Health.UP, "late reply arrived")
        return None

    def tick(self, now: float) -> Transition | None:
        """Re-evaluate silence at ``now`` (call at least every probe interval)."""
        # Between two signs of life the loop never waits longer than this.
        stalled = now - self.last_tick - (self.timing.interval + self.late_after)
        if stalled > 0:
            # We were not running: forgive that time and the probes' lateness.
            self.last_answer += stalled
            self.unanswered = deque((t + stalled for t in self.unanswered), maxlen=self.unanswered.maxlen)
        self.last_tick = now
        lost = self._lost(now)
        if lost:
            self.consecutive_answers = 0
        silence = now - self.last_answer
        if self.state is not Health.DOWN and lost >= self.timing.min_lost and silence >= self.dead_after(now):
            return self._move(Health.DOWN, f"no answer for {silence:.2f} s, {lost} probes lost")
        if self.state is Health.UP and lost:
            return self._move(Health.SUSPECT, "reply overdue")
        if self.state is Health.RISING and lost:
            return self._move(Health.DOWN, "lost a probe while rising")
        return None

    # --- outputs ----------------------------------------------------------

    @property
    def next_interval(self) -> float:
        if self.state in (Health.SUSPECT, Health.UNKNOWN):
            return self.timing.burst_interval
        return self.timing.interval

    def dead_after(self, now: float) -> float:
        """Silence that makes the target down: ``dead_interval``, stretched on
        slow paths to four smoothed RTTs, and after recent stalls to
        ``stall_factor`` times the longest one (TCP retransmissions in the
        underlay turn loss into stalls of seconds that end on their own)."""
        while self.stalls and now - self.stalls[0][0] > self.timing.stall_memory:
            self.stalls.popleft()
        longest_stall = max((rtt for _, rtt in self.stalls), default=0.0)
        return max(self.timing.dead_interval, 4 * (self.srtt or 0.0), self.timing.stall_factor * longest_stall)

    @property
    def late_after(self) -> float:
        if self.srtt is None:
            return self.timing.late_after
        return max(self.timing.late_after, 2 * self.srtt + 4 * self.rttvar)

    # --- internals --------------------------------------------------------

    def _lost(self, now: float) -> int:
        """Probes sent since the last answer whose reply is overdue."""
        deadline = now - self.late_after
        return sum(1 for sent_at in self.unanswered if sent_at <= deadline)

    def _update_rtt(self, rtt: float) -> None:
        # RFC 6298 smoothing.
        if self.srtt is None:
            self.srtt, self.rttvar = rtt, rtt / 2
        else:
            self.rttvar = 0.75 * self.rttvar + 0.25 * abs(self.srtt - rtt)
            self.srtt = 0.875 * self.srtt + 0.125 * rtt

    def _move(self, new: Health, reason: str) -> Transition:
        if new not in TRANSITIONS[self.state]:
            raise AssertionError(f"illegal transition {self.state.name} -> {new.name}")
        transition = Transition(self.state, new, reason)
        self.state = new
        if new is Health.DOWN:
            self.consecutive_answers = 0
        return transition
