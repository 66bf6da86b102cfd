"""JSON-lines logging and a rate limiter for noisy events.

One object per line: ``{"ts": ISO-8601 UTC, "level", "logger", "msg", ...}``
where ``...`` are the ``extra={...}`` fields of the call, so state changes can
be logged as ``LOG.info("primary switched", extra={"old": a, "new": b})``.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

_STANDARD_ATTRS = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD_ATTRS and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, separators=(",", ":"))


def setup_logging(level: str = "info", stream=None) -> None:
    """Send every log record to ``stream`` (stderr) as JSON lines."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # pyroute2 logs every netlink message at debug: never useful to an operator.
    logging.getLogger("pyroute2").setLevel(max(root.level, logging.WARNING))


class RateLimiter:
    """Allow one event per key per ``interval`` seconds; count what was held back.

    ``allow(key)`` returns None when the event must not be logged, else the
    number of events suppressed for that key since the last allowed one.
    """

    def __init__(self, interval: float = 10.0, clock: Callable[[], float] = time.monotonic, max_keys: int = 1024):
        self.interval = interval
        self.clock = clock
        self.max_keys = max_keys
        self._next: dict[object, float] = {}
        self._suppressed: dict[object, int] = {}

    def allow(self, key: object) -> int | None:
        now = self.clock()
        if now < self._next.get(key, float("-inf")):
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return None
        if key not in self._next and len(self._next) >= self.max_keys:
            # Bounded memory under a flood of distinct keys: forget the oldest.
            oldest = next(iter(self._next))
            del self._next[oldest]
            self._suppressed.pop(oldest, None)
        self._next.pop(key, None)
        self._next[key] = now + self.interval
        return self._suppressed.pop(key, 0)
