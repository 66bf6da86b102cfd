"""When to restart the vpn-shoot's OpenVPN clients (pure, clock passed in).

vpn2's semantics: every receive attempt is one event, a failure when no
announcement arrived within the receive timeout, a success per announcement.
The last ``window`` events form a sliding window; when ``threshold`` of them
are failures the action fires, the window is cleared and the next
``cooldown`` events are ignored. Added here: nothing counts during a start-up
grace period, so a fresh pod cannot restart OpenVPN before any
kube-apiserver could have announced itself.
"""

from __future__ import annotations

from collections import deque


class Watchdog:
    def __init__(self, *, window: int, threshold: int, cooldown: int, grace: float, started: float):
        if not 1 <= threshold <= window:
            raise ValueError(f"threshold must be 1..{window}, got {threshold}")
        if cooldown < 1:
            raise ValueError(f"cooldown must be positive, got {cooldown}")
        self.window = window
        self.threshold = threshold
        self.cooldown = cooldown
        self.grace_until = started + grace
        self._events: deque[bool] = deque()  # True = failure, oldest first
        self.failures = 0  # failures in the window
        self._cooldown_left = 0

    def in_grace(self, now: float) -> bool:
        return now < self.grace_until

    def record(self, failed: bool, now: float) -> bool:
        """Record one event; True when the action must run now."""
        if self.in_grace(now):
            return False
        if self._cooldown_left > 0:
            self._cooldown_left -= 1
            return False
        self._events.append(failed)
        self.failures += failed
        if len(self._events) > self.window:
            self.failures -= self._events.popleft()
        if self.failures >= self.threshold:
            self._events.clear()
            self.failures = 0
            self._cooldown_left = self.cooldown
            return True
        return False
