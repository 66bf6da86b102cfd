"""Connection pinning, the decision: where new connections go, which vpn-shoots are refused.

Pure and clock-free (the core passes ``now``). The kernel side is
``pinning.ConnectionPinning``; the core turns a changed choice into one
``ApplyPinning`` effect and waits for its answer before sending the next.

- New connections go to the primary, or (spread) to every healthy vpn-shoot
  that is not leaving; never to none: the primary is the fallback.
- A vpn-shoot down for ``close_after`` is refused and its connections are
  closed, so they error instead of hanging; a shorter silence (a stall that
  forced a switch) leaves them pinned, and they resume when it ends. The
  vpn-shoot new connections go to is never refused: with no healthy path we
  keep what we have.
- A refused vpn-shoot that is healthy again is allowed before it gets new
  connections.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

MODES = ("off", "primary", "spread")


@dataclass(frozen=True)
class PinChoice:
    new_to: tuple[int, ...]  # one vpn-shoot, or those spread over
    refused: frozenset[int] = frozenset()


@dataclass
class PinPlan:
    mode: str  # off | primary | spread
    close_after: float
    down_since: dict[int, float] = field(default_factory=dict)
    applied: PinChoice | None = None  # what the kernel holds, as last confirmed

    @property
    def on(self) -> bool:
        return self.mode != "off"

    def observe(self, j: int, healthy: bool, now: float) -> None:
        """A verdict on vpn-shoot j: start or end its time down."""
        if healthy:
            self.down_since.pop(j, None)
        else:
            self.down_since.setdefault(j, now)

    def wanted(self, primary: int | None, healthy: Iterable[int], leaving: frozenset[int], now: float) -> PinChoice | None:
        if not self.on or primary is None:
            return None
        if self.mode == "spread":
            new_to = tuple(sorted(j for j in healthy if j not in leaving)) or (primary,)
        else:
            new_to = (primary,)
        refused = frozenset(
            j for j, since in self.down_since.items() if now - since >= self.close_after and j not in new_to
        )
        return PinChoice(new_to, refused)

    def next_wakeup(self, now: float) -> float:
        """When a vpn-shoot's time down reaches ``close_after``."""
        due = [since + self.close_after for since in self.down_since.values() if since + self.close_after > now]
        return min(due, default=float("inf"))
