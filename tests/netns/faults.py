"""Proof that an injected fault took effect, before a test asserts how the
daemons behave under it: loss measured with a probe stream and compared with
what was injected, black holes shown by their qdisc counters."""

from __future__ import annotations

import asyncio
import json
import math
import re
from dataclasses import dataclass, field

from tests.netns import nsutil


def round_trip_loss(each_way: float) -> float:
    """Share of request/answer pairs lost when each direction loses ``each_way``."""
    return 1 - (1 - each_way) ** 2


def assert_loss_near(lost: int, sent: int, expected: float, what: str) -> float:
    """The measured loss share; fails unless it lies within five binomial standard
    deviations of ``expected`` (about one false failure in a million runs)."""
    assert sent >= 50, f"{what}: only {sent} packets sent, too few to measure loss"
    measured = lost / sent
    band = 5 * math.sqrt(expected * (1 - expected) / sent)
    assert abs(measured - expected) <= band, (
        f"{what}: {lost} of {sent} lost ({measured:.1%}), expected {expected:.1%} ± {band:.1%}: "
        "the impairment is not what the test injects"
    )
    return measured


@dataclass(frozen=True)
class QdiscCounters:
    """Packets a root qdisc passed on and dropped (netem counts what it drops in ``dropped`` only)."""

    sent: int = 0
    dropped: int = 0

    def __add__(self, other: QdiscCounters) -> QdiscCounters:
        return QdiscCounters(self.sent + other.sent, self.dropped + other.dropped)


def root_qdisc_counters(ns: str, dev: str, kind: str = "netem") -> QdiscCounters:
    """Counters of ``dev``'s root qdisc, which must be a ``kind`` qdisc."""
    (qdisc,) = [q for q in json.loads(nsutil.run_in(ns, ["tc", "-s", "-j", "qdisc", "show", "dev", dev]).stdout) if q.get("root")]
    assert qdisc["kind"] == kind, f"{ns}/{dev}: root qdisc is {qdisc['kind']}, not {kind}"
    return QdiscCounters(qdisc["packets"], qdisc["drops"])


def assert_black_hole(counters: QdiscCounters, what: str) -> None:
    """Every packet offered to the black hole's qdiscs since they were put in place was dropped."""
    assert counters.dropped > 0 and counters.sent == 0, (
        f"{what}: the black hole passed {counters.sent} packets and dropped {counters.dropped}"
    )


@dataclass
class PingResult:
    transmitted: int
    received: int
    output: str = field(repr=False, default="")

    @property
    def lost(self) -> int:
        return self.transmitted - self.received


class ContinuousPing:
    """``ping -i <interval> -c <count>`` in a namespace; counts what was lost."""

    def __init__(self, processes: nsutil.ProcessGroup, ns: str, dst: str, src: str | None = None,
                 interval: float = 0.05, count: int = 200):
        argv = ["ping", "-n", "-i", f"{interval:g}", "-c", str(count), "-W", "1", *(["-I", src] if src else []), dst]
        self.proc = processes.start(ns, argv, name="ping")

    def replies(self) -> int:
        return len(re.findall(r"icmp_seq=\d+", self.proc.output()))

    def running(self) -> bool:
        return self.proc.popen.poll() is None

    async def wait_replies(self, count: int, timeout: float = 20.0) -> None:
        await nsutil.wait_for(lambda: self.replies() >= count, timeout=timeout, message=f"{count} ping replies")

    async def result(self, timeout: float = 60.0) -> PingResult:
        await asyncio.to_thread(self.proc.popen.wait, timeout)
        output = self.proc.output()
        match = re.search(r"(\d+) packets transmitted, (\d+) received", output)
        assert match, output
        return PingResult(int(match.group(1)), int(match.group(2)), output)
