"""The kube-apiservers this vpn-shoot knows: who announced which pod IPs, when.

Pure: no I/O, time is passed in. The controller feeds it accepted
announcements and the results of kernel operations; it answers what is
wanted (peers and their pod IPs), which peers wait for a retry, which have
expired, and whether the pod is ready (vpn2's ``/readyz`` rules).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv6Address

from bonding.plan import shoot_tunnel_name
from daemonkit.backoff import Backoff
from tunnel_controller.outcomes import RejectReason

IPAddress = IPv4Address | IPv6Address

FLAP_WINDOW = 60.0  # seconds; see Observation.flapping


class Outcome(enum.Enum):
    NEW = "new"
    CHANGED = "changed"  # pod IPs differ from the last announcement
    REFRESHED = "refreshed"  # same as before: only last-seen moves


class PeerRejected(Exception):
    """An otherwise valid announcement the registry refuses; ``reason`` is a metric label."""

    def __init__(self, reason: RejectReason, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class Status(enum.Enum):
    PENDING = "pending"  # tunnel or routes not (yet) confirmed in the kernel
    READY = "ready"
    FAILED = "failed"  # last attempt failed; retried at retry_at


@dataclass
class Peer:
    remote: IPv6Address
    device: str
    pod_ips: tuple[IPAddress, ...]
    last_seen: float
    claimed_at: float  # when pod_ips last changed: the newer claim wins a contested pod IP
    adopted: bool = False
    last_timestamp_ms: int | None = None
    previous_pod_ips: tuple[IPAddress, ...] = ()
    status: Status = Status.PENDING
    error: str = ""
    backoff: Backoff = field(default_factory=lambda: Backoff(1.0, 30.0))
    retry_at: float = 0.0

    @property
    def failures(self) -> int:
        """Failed attempts since the last success or change of pod IPs."""
        return self.backoff.failures

    def start_over(self, status: Status) -> None:
        """A fresh start: ``status``, no error, no backoff."""
        self.status, self.error, self.retry_at = status, "", 0.0
        self.backoff.reset()

    def held(self, now: float) -> bool:
        """In backoff after a failure: leave its kernel objects alone until retry_at."""
        return self.status is Status.FAILED and now < self.retry_at


@dataclass(frozen=True)
class Observation:
    outcome: Outcome
    peer: Peer
    # Changed back to the pod IPs it had just before, within FLAP_WINDOW:
    # most likely two kube-apiservers share one bond address.
    flapping: bool = False


class PeerRegistry:
    def __init__(self, *, expiry: float, max_peers: int, retry_min: float = 1.0, retry_max: float = 30.0):
        self.expiry = expiry
        self.max_peers = max_peers
        self.retry_min = retry_min
        self.retry_max = retry_max
        self.peers: dict[IPv6Address, Peer] = {}

    def __len__(self) -> int:
        return len(self.peers)

    def get(self, remote: IPv6Address) -> Peer | None:
        return self.peers.get(remote)

    # --- announcements ------------------------------------------------------

    def observe(
        self, remote: IPv6Address, pod_ips: tuple[IPAddress, ...], now: float, timestamp_ms: int | None = None
    ) -> Observation:
        """Record an accepted announcement; PeerRejected for replays and a full registry."""
        peer = self.peers.get(remote)
        if peer is not None and timestamp_ms is not None and peer.last_timestamp_ms is not None:
            if timestamp_ms <= peer.last_timestamp_ms:
                raise PeerRejected(RejectReason.REPLAYED, f"timestamp {timestamp_ms} not after {peer.last_timestamp_ms}")
        flapping = False
        if peer is None:
            if len(self.peers) >= self.max_peers:
                raise PeerRejected(RejectReason.PEER_LIMIT, f"{len(self.peers)} peers known (MAX_PEERS)")
            peer = self._new_peer(remote, pod_ips, now)
            outcome = Outcome.NEW
        elif set(pod_ips) != set(peer.pod_ips):
            flapping = set(pod_ips) == set(peer.previous_pod_ips) and now - peer.claimed_at < FLAP_WINDOW
            peer.previous_pod_ips = peer.pod_ips
            peer.pod_ips = tuple(pod_ips)
            peer.claimed_at = now
            peer.start_over(Status.PENDING)  # a new payload is worth trying at once, backoff or not (as vpn2)
            outcome = Outcome.CHANGED
        else:
            outcome = Outcome.REFRESHED
        peer.last_seen = now
        peer.adopted = False
        if timestamp_ms is not None:
            peer.last_timestamp_ms = timestamp_ms
        return Observation(outcome, peer, flapping)

    def adopt(self, remote: IPv6Address, pod_ips: tuple[IPAddress, ...], now: float) -> Peer:
        """A tunnel found in the kernel at start: a peer that expires unless it announces."""
        peer = self._new_peer(remote, pod_ips, now)
        peer.adopted = True
        return peer

    def _new_peer(self, remote: IPv6Address, pod_ips: tuple[IPAddress, ...], now: float) -> Peer:
        backoff = Backoff(self.retry_min, self.retry_max)
        peer = Peer(remote, shoot_tunnel_name(remote), tuple(pod_ips), now, now, backoff=backoff)
        self.peers[remote] = peer
        return peer

    # --- time -------------------------------------------------------------

    def expire(self, now: float) -> list[Peer]:
        """Remove and return the peers silent for longer than the expiry."""
        gone = [peer for peer in self.peers.values() if now - peer.last_seen >= self.expiry]
        for peer in gone:
            del self.peers[peer.remote]
        return gone

    def next_deadline(self, now: float) -> float | None:
        """When something is due without new input: the next expiry or pending retry."""
        deadlines = [peer.last_seen + self.expiry for peer in self.peers.values()]
        deadlines += [peer.retry_at for peer in self.peers.values() if peer.held(now)]
        return min(deadlines, default=None)

    # --- results of kernel operations -------------------------------------

    def succeeded(self, remote: IPv6Address) -> None:
        peer = self.peers.get(remote)
        if peer is not None:
            peer.start_over(Status.READY)

    def unsettled(self, remote: IPv6Address) -> None:
        """Its kernel objects are not confirmed (e.g. removed behind our back)."""
        peer = self.peers.get(remote)
        if peer is not None and peer.status is Status.READY:
            peer.status = Status.PENDING

    def failed(self, remote: IPv6Address, error: str, now: float) -> float:
        """Record a failure; returns the delay before the next attempt (doubling, capped)."""
        peer = self.peers.get(remote)
        if peer is None:
            return 0.0
        delay = peer.backoff.next()
        peer.status, peer.error, peer.retry_at = Status.FAILED, error, now + delay
        return delay

    def held_devices(self, now: float) -> set[str]:
        return {peer.device for peer in self.peers.values() if peer.held(now)}

    # --- readiness (vpn2 semantics) ----------------------------------------

    def readiness(self) -> tuple[bool, str]:
        announced = [peer for peer in self.peers.values() if peer.pod_ips]
        if not announced:
            return False, "no kube apiservers configured"
        broken = [peer for peer in announced if peer.status is not Status.READY]
        if not broken:
            return True, "ok"
        first = min(broken, key=lambda peer: peer.remote)
        ips = ",".join(str(ip) for ip in first.pod_ips)
        reason = f"no route to kube apiserver with pod IP {ips} ({first.error or first.status.value})"
        if len(broken) > 1:
            reason += f"; {len(broken) - 1} more"
        return False, reason
