"""Effects every pure core may return besides its own: a log line and a metric update.

The runner that drives the core writes the log record and applies the update to
the daemon's prometheus metrics object (``name`` is its attribute)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Log:
    level: int
    message: str
    fields: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Metric:
    """``op`` on the metric attribute ``name``: inc | set | observe | state."""

    name: str
    op: str
    value: float | str = 1
    labels: tuple = ()


def write_log(logger: logging.Logger, effect: Log) -> None:
    logger.log(effect.level, effect.message, extra=effect.fields)


def apply_metric(metrics: object, effect: Metric) -> None:
    metric = getattr(metrics, effect.name)
    if effect.labels:
        metric = metric.labels(*(str(label) for label in effect.labels))
    if effect.op == "inc":
        metric.inc(effect.value)
    elif effect.op == "set":
        metric.set(effect.value)
    elif effect.op == "observe":
        metric.observe(effect.value)
    elif effect.op == "state":
        metric.state(effect.value)
    else:
        raise ValueError(f"unknown metric operation {effect.op!r}")
