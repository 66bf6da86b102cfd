"""Exponential backoff for retries of a failing operation (pure; the caller sleeps or schedules)."""

from __future__ import annotations


class Backoff:
    """Delays ``initial``, ``initial * factor``, ... capped at ``maximum``.

    ``next()`` counts one more failure and returns how long to wait before the
    next attempt; ``reset()`` after a success starts over at ``initial``.
    """

    def __init__(self, initial: float, maximum: float, factor: float = 2.0):
        if not 0 < initial <= maximum:
            raise ValueError(f"backoff needs 0 < initial <= maximum, got {initial}, {maximum}")
        if factor < 1:
            raise ValueError(f"backoff factor must be at least 1, got {factor}")
        self.initial = initial
        self.maximum = maximum
        self.factor = factor
        self.failures = 0
        self._delay = initial

    def next(self) -> float:
        delay = self._delay
        self.failures += 1
        # Grow the stored delay, not factor ** failures: no overflow however long it fails.
        self._delay = min(self.maximum, delay * self.factor)
        return delay

    def reset(self) -> None:
        self.failures = 0
        self._delay = self.initial

    def __repr__(self) -> str:
        return f"Backoff({self.initial}, {self.maximum}, factor={self.factor}, failures={self.failures})"
