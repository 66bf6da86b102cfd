"""Health of one probed vpn-shoot: a clock-injected state machine with rise/fall.

Decisions rest on silence, not on single misses. A target is probed every
``interval``; once a reply is overdue (``late_after`` past the expected time)
it is SUSPECT and probed every ``burst_interval``. It is DOWN only when it has
been silent for ``dead_interval`` *and* at least ``min_lost`` probes sent in
that silence went unanswered (a probe counts as lost once ``late_after``
old, which grows with the path's RTT). With
20 % loss each way a probe fails with p = 0.36; calling a target down needs
about 15 failures in a row (0.36^15 ≈ 2e-7), while a dead target is called
down about ``dead_interval`` after its last answer. It comes back UP after
``rise`` consecutive answers.

Time the daemon itself did not run (a stalled event loop) does not count as
silence: it cannot tell anything about the target. A stall counts as the
path's only when another target answered promptly meanwhile; otherwise it was
this node's, its bond's or a server's.
"""

from __future__ import annotations

import enum
import math
from collections import deque
from collections.abc import Iterable
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
    # The lost-probe deadline (2 x SRTT + 4 x RTTVAR) never grows beyond this.
    # Detection takes the deadline plus min_lost bursts: on a loaded node round
    # trips of a few hundred ms raised it to 1-2 s and every failover waited
    # that long (end-to-end benchmark). A slow or lossy path is protected from
    # a false verdict by the silence rule (dead_interval without any answer),
    # not by the deadline. The unanswered probes kept always span it.
    late_after_max: float = 0.25
    # Only answers that keep coming this late for this long (a path that got
    # slower) enter the RTT estimate; the burst of late answers one stall
    # releases arrives within milliseconds and does not.
    slower_after: float = 5.0
    # A path that keeps answering after long stalls (OpenVPN's TCP
    # retransmitting over a lossy underlay: stall_events separate stalls
    # within stall_window) must stay silent stall_factor times the longest
    # stall before it is down, for stall_memory seconds. One stall (a server
    # failover) does not count: it would slow down the next real failover.
    # An answer this late (or 2 x late_after on slow paths) is a stall. Below
    # half a second it is scheduling jitter on a busy node, and remembering
    # it would slow every later failover down (measured in the sandbox).
    stall_min: float = 0.5
    # A target that came up less than this long ago is still settling (its
    # OpenVPN clients connect one by one, the bond reselects its primary):
    # its hiccups are not the path's.
    stall_settle: float = 10.0
    stall_events: int = 3
    stall_window: float = 60.0
    stall_factor: float = 4.0
    stall_memory: float = 0.0  # off by default: see PROBE_STALL_MEMORY in the README
    # When the other target was silent too (for a dead interval or more) while the
    # primary's silence began, something both paths share failed: this node, a server.
    # Their paths come back apart by as much as the bonds' moves are apart (server
    # steering moves each pod on its own: 0.1-0.7 s apart, once over 1 s, measured
    # on a loaded sandbox), so the primary must stay silent this long after the other answered
    # before it counts as outlasted. A primary that dies alone is judged at once.
    shared_silence_margin: float = 1.5


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
        # Enough to span the longest lost-probe deadline at the burst rate.
        keep = math.ceil(max(timing.late_after_max, timing.late_after) / max(timing.burst_interval, 0.001))
        self.unanswered: deque[float] = deque(maxlen=max(64, keep + timing.min_lost + 1))
        self.consecutive_answers = 0
        self.srtt: float | None = None
        self.rttvar = 0.0
        self.stalls: deque[list[float]] = deque(maxlen=64)  # [when, longest rtt] per stall event
        self.late_run_since: float | None = None  # arrival of the first stall answer in a row
        self.stretch = 0.0  # silence needed while the path is known to stall
        self.stretch_until = float("-inf")
        # Since when the target is not known alive (UNKNOWN, DOWN, RISING); inf while it is.
        self.down_since = now
        self.up_since = float("-inf")  # when it last became UP (from UNKNOWN, DOWN or RISING)
        # Evidence for comparing targets: when the current silence began (send time of
        # its first unanswered probe), and (send time, round trip) of recent answers.
        self.silent_since = float("inf")
        self.answers: deque[tuple[float, float]] = deque(maxlen=64)
        self.silences: deque[tuple[float, float]] = deque(maxlen=8)  # (start, end) of recent long silences
        self.bond_moved_at = float("-inf")  # this node's bond last changed server (a shared silence)
        self.hold_until = float("-inf")  # no DOWN verdict before this (bondwatch)

    # --- inputs -----------------------------------------------------------

    def sent(self, now: float) -> None:
        if not self.unanswered:
            self.silent_since = now
        self.unanswered.append(now)
        self.last_tick = now  # we are running

    def answered(self, rtt: float, now: float, others: Iterable[TargetHealth] = ()) -> Transition | None:
        """A matching echo reply arrived (possibly late); ``others`` are the other targets."""
        sent_at = now - rtt
        self.answers.append((sent_at, rtt))
        # Probes sent to a target not known alive (start-up, down) are answered late
        # when it comes (back), all at once, queued until its neighbour entry resolved:
        # they say nothing about the path, neither as stalls nor as round trips.
        if self.up_since <= sent_at < self.down_since:
            self._judge_round_trip(rtt, now, others)
        # A silence that made it down counts even if time the daemon itself did not run
        # was forgiven from it (tick): on a busy node that is when both paths fail together.
        if self.state is Health.DOWN or now - self.silent_since >= self.timing.dead_interval:
            self.silences.append((self.silent_since, now))
        self.last_answer = self.last_tick = now
        self.unanswered.clear()
        self.silent_since = float("inf")
        self.consecutive_answers += 1
        if self.state in (Health.UNKNOWN, Health.DOWN, Health.RISING):
            if self.consecutive_answers >= self.timing.rise:
                self.down_since = float("inf")
                self.up_since = now
                return self._move(Health.UP, f"{self.consecutive_answers} answers in a row")
            if self.state is Health.DOWN:
                return self._move(Health.RISING, "answering again")
            return None
        if self.state is Health.SUSPECT:
            return self._move(Health.UP, "late reply arrived")
        return None

    def hold(self, until: float) -> None:
        """Call the target down no sooner than ``until``: this node's bond is failing over,
        every path is interrupted and the silence says nothing about this target."""
        self.hold_until = max(self.hold_until, until)

    def tick(self, now: float) -> Transition | None:
        """Re-evaluate silence at ``now`` (call at least every probe interval)."""
        # Between two signs of life the loop never waits longer than this.
        stalled = now - self.last_tick - (self.timing.interval + self.late_after)
        if stalled > 0:
            # We were not running: forgive that time and the probes' lateness.
            self.last_answer += stalled
            self.silent_since += stalled
            self.unanswered = deque((t + stalled for t in self.unanswered), maxlen=self.unanswered.maxlen)
        self.last_tick = now
        lost = self._lost(now)
        if lost:
            self.consecutive_answers = 0
        silence = now - self.last_answer
        verdict_due = now >= self.hold_until and lost >= self.timing.min_lost and silence >= self.dead_after(now)
        if self.state is not Health.DOWN and verdict_due:
            if self.state in (Health.UP, Health.SUSPECT):
                self.down_since = now
            return self._move(
                Health.DOWN,
                f"no answer for {silence:.2f} s, {lost} probes lost"
                f" (lost after {self.late_after:.3f} s, down after {self.dead_after(now):.2f} s)",
            )
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

    def outlasted_by(self, other: TargetHealth, now: float) -> bool:
        """Whether ``other`` answered a probe sent while this target was silent, and this
        one then stayed silent for half a dead interval more: this path failed, not just
        the moment. A stalled node delays every target's answers alike, and after a
        silence every target shared they come back within milliseconds. The margin costs
        a real death nothing: the down verdict needs longer. When ``other`` was silent
        for a dead interval while ours began, or this node's bond changed server in it
        (a server failed, the bonds are moving), the paths come back as far apart as
        the bonds' moves: the margin is then ``shared_silence_margin``."""
        margin = max(self.late_after, self.timing.dead_interval / 2)
        # Half a second of slack: time the daemon did not run is forgiven from silent_since.
        moved_in_it = self.bond_moved_at >= self.silent_since - 0.5
        if moved_in_it or any(end > self.silent_since for _, end in other.silences):
            margin = max(margin, self.timing.shared_silence_margin)
        for sent_at, rtt in other.answers:
            if sent_at >= self.silent_since:
                deadline = now - rtt - margin
                if any(sent_at <= ours <= deadline for ours in self.unanswered):
                    return True
        return False

    def dead_after(self, now: float) -> float:
        """Silence that makes the target down: ``dead_interval``, stretched on
        paths that keep stalling to ``stall_factor`` times their longest
        recent stall (TCP retransmissions in the underlay turn loss into
        stalls of seconds that end on their own). Slow paths need no stretch:
        a probe only counts as lost once it is ``late_after`` old."""
        stretch = self.stretch if now < self.stretch_until else 0.0
        return max(self.timing.dead_interval, stretch)

    @property
    def late_after(self) -> float:
        if self.srtt is None:
            return self.timing.late_after
        ceiling = max(self.timing.late_after, self.timing.late_after_max)
        return min(ceiling, max(self.timing.late_after, 2 * self.srtt + 4 * self.rttvar))

    # --- internals --------------------------------------------------------

    def _lost(self, now: float) -> int:
        """Probes sent since the last answer whose reply is overdue."""
        deadline = now - self.late_after
        return sum(1 for sent_at in self.unanswered if sent_at <= deadline)

    def _judge_round_trip(self, rtt: float, now: float, others: Iterable[TargetHealth]) -> None:
        """The answer to a probe sent while the target was alive: a round trip, or a stall.

        A stall is far beyond the usual round trip; it must not drag the RTT estimate
        (and with it every deadline) up for minutes. Only late answers that keep coming
        mean the path itself got slower.
        """
        if rtt <= max(self.timing.stall_min, 2 * self.late_after):
            self.late_run_since = None
            self._update_rtt(rtt)
            return
        # A target just up still has its OpenVPN clients connecting: its hiccups are not the path's.
        sent_at = now - rtt
        if now - self.up_since >= self.timing.stall_settle and stall_was_the_paths(sent_at, rtt, others):
            self._stalled(rtt, now)
        if self.late_run_since is None:
            self.late_run_since = now
        if now - self.late_run_since >= self.timing.slower_after:
            self._update_rtt(rtt)

    def _stalled(self, rtt: float, now: float) -> None:
        """An answer came ``rtt`` late: note the stall event (answers less than a second apart are one)."""
        if self.stalls and now - self.stalls[-1][0] < 1.0:
            self.stalls[-1][0] = now
            self.stalls[-1][1] = max(self.stalls[-1][1], rtt)
        else:
            self.stalls.append([now, rtt])
        while self.stalls and now - self.stalls[0][0] > self.timing.stall_window:
            self.stalls.popleft()
        if len(self.stalls) >= self.timing.stall_events:
            longest = self.timing.stall_factor * max(event[1] for event in self.stalls)
            self.stretch = max(longest, self.stretch if now < self.stretch_until else 0.0)
            self.stretch_until = now + self.timing.stall_memory

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


def stall_was_the_paths(sent_at: float, rtt: float, others: Iterable[TargetHealth]) -> bool:
    """A stall of ``rtt`` on a probe sent at ``sent_at`` hit this path only.

    Only when another target, alive at ``sent_at``, answered a probe sent in the
    second half of the stall in less than half the stall. Otherwise it was this
    node's, its bond's or a server's (every target shares those), or there is
    nothing to compare with (the other vpn-shoot dead or restarting, which
    loads the node): remembering it would slow the next failover down.
    """
    live = [other for other in others if other.down_since > sent_at]
    return any(_answered_promptly(other, sent_at + rtt / 2, rtt / 2) for other in live)


def _answered_promptly(health: TargetHealth, since: float, within: float) -> bool:
    """Whether ``health`` answered, in less than ``within``, a probe sent after ``since``."""
    return any(sent_at >= since and rtt < within for sent_at, rtt in health.answers)
