"""The path-controller with gardener/vpn2's probe timing, for side-by-side benchmarks.

    python -m benchmarks.vpn2_profile      (same environment as path_controller)

The daemon is ours (core, routes, announcements, HTTP); only its probe policy
is vpn2's (reference/vpn2-behavior.md §2.3-2.4), plugged into the same core:
a round every 2 s (a round that runs long is followed at once by the next);
in a round every target is pinged in parallel with up to 10 attempts of 1 s
each, back to back, stopping at the first answer; the round ends when the
slowest target is done; a target is good after one answer; the primary
changes when it was not good in a round and another one was (no evidence
rule, no hold while the bond fails over). Benchmark code, not for production.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass

from path_controller.__main__ import main as path_controller_main
from path_controller.config import PathControllerSettings
from path_controller.probe import Health, Transition

TICK = 2.0
TIMEOUT = 1.0
TRIES = 10


class RoundVerdict:
    """vpn2 judges a target by its last round alone and switches to any target that passed it."""

    def __init__(self):
        self.state = Health.UNKNOWN

    def outlasted_by(self, other, now: float) -> bool:
        return True


@dataclass
class _Attempts:
    tries: int = 0
    deadline: float = float("inf")
    good: bool | None = None  # None while the round still pings this target


class Vpn2Rounds:
    """vpn2's probing as a probe policy for PathCore (see path_controller/probing.py)."""

    def __init__(self, targets: int, now: float, tick: float = TICK, timeout: float = TIMEOUT, tries: int = TRIES):
        self.tick, self.timeout, self.tries = tick, timeout, tries
        self.verdicts = {j: RoundVerdict() for j in range(targets)}
        self.attempts: dict[int, _Attempts] | None = None  # the round under way
        self.round_started = now
        self.next_round = now

    def views(self) -> Mapping[int, RoundVerdict]:
        return self.verdicts

    def step(self, now: float) -> tuple[list[int], list[tuple[int, Transition]]]:
        if self.attempts is None:
            if now < self.next_round:
                return [], []
            self.round_started = now
            self.attempts = {j: _Attempts() for j in self.verdicts}
        sends = []
        for j, attempt in self.attempts.items():
            if attempt.good is not None or now < attempt.deadline and attempt.tries:
                continue
            if attempt.tries < self.tries:
                attempt.tries += 1
                attempt.deadline = now + self.timeout
                sends.append(j)
            else:
                attempt.good = False
        return sends, self._end_of_round(now)

    def answered(self, target: int, rtt: float, now: float) -> list[tuple[int, Transition]]:
        if self.attempts is not None and self.attempts[target].good is None:
            self.attempts[target].good = True
        return self._end_of_round(now)

    def _end_of_round(self, now: float) -> list[tuple[int, Transition]]:
        if self.attempts is None or any(a.good is None for a in self.attempts.values()):
            return []
        verdicts = []
        for j, attempt in self.attempts.items():
            new = Health.UP if attempt.good else Health.DOWN
            verdict = self.verdicts[j]
            if verdict.state is not new:
                verdicts.append((j, Transition(verdict.state, new, f"round after {attempt.tries} pings")))
                verdict.state = new
        self.attempts = None
        self.next_round = max(self.round_started + self.tick, now)
        return verdicts

    def next_wakeup(self) -> float:
        if self.attempts is None:
            return self.next_round
        return min((a.deadline for a in self.attempts.values() if a.good is None), default=self.next_round)

    def hold(self, until: float) -> None:
        pass  # vpn2 holds nothing while a bond fails over

    def bond_moved(self, now: float) -> None:
        pass  # vpn2 knows nothing of it

    def witness(self, target: int, now: float, hold: float, longest: float) -> None:
        pass  # nor knows anything but its pings

    def gauges(self, target: int, now: float) -> dict[str, float]:
        return {}


def vpn2_rounds(settings: PathControllerSettings, now: float) -> Vpn2Rounds:
    return Vpn2Rounds(len(settings.targets), now)


def main() -> int:
    # Bond failovers are still counted, but hold nothing, as in vpn2.
    return path_controller_main(policy=vpn2_rounds, program="vpn2-profile", overrides={
        "probe_failover_hold": 0.0, "connection_pinning": False, "server_steering": False,
    })


if __name__ == "__main__":
    sys.exit(main())
