"""Per-sender rate limit for announcements (pure, clock passed in).

A token bucket per source address: ``burst`` datagrams at once, ``rate`` per
second sustained. The table of buckets is bounded; when it is full the
least recently seen sender is forgotten (it starts again with a full bucket,
which is the worst a flood of rotating sources can get out of it).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable


class SourceRateLimiter:
    def __init__(self, rate: float, burst: int, max_sources: int = 4096):
        self.rate = rate
        self.burst = float(burst)
        self.max_sources = max_sources
        self._buckets: OrderedDict[Hashable, tuple[float, float]] = OrderedDict()  # source -> (tokens, at)

    def __len__(self) -> int:
        return len(self._buckets)

    def allow(self, source: Hashable, now: float) -> bool:
        """Take one token for ``source``; False when it has none left."""
        tokens, at = self._buckets.pop(source, (self.burst, now))
        tokens = min(self.burst, tokens + (now - at) * self.rate)
        allowed = tokens >= 1.0
        if allowed:
            tokens -= 1.0
        self._buckets[source] = (tokens, now)
        if len(self._buckets) > self.max_sources:
            self._buckets.popitem(last=False)
        return allowed
