"""The closed sets the tunnel-controller reports (metric labels, log reasons), as enums.

``StrEnum`` members are their label text, so ``counter.labels(PeerEvent.NEW)``
and ``counter.labels("new")`` are the same series.
"""

from __future__ import annotations

import enum


class RejectReason(enum.StrEnum):
    """Why a datagram was ignored."""

    # announcement.wire's Rejected.reason
    OVERSIZED = "oversized"
    MALFORMED = "malformed"
    BAD_ADDRESS = "bad-address"
    UNAUTHENTICATED = "unauthenticated"
    BAD_MAC = "bad-mac"
    SOURCE_MISMATCH = "source-mismatch"
    STALE = "stale"
    # ours
    FOREIGN_SOURCE = "foreign-source"
    RATE_LIMITED = "rate-limited"
    REPLAYED = "replayed"
    PEER_LIMIT = "peer-limit"


class PeerEvent(enum.StrEnum):
    NEW = "new"
    POD_IP_CHANGED = "pod-ip-changed"
    POD_IP_FLAPPING = "pod-ip-flapping"
    EXPIRED = "expired"
    ADOPTED = "adopted"


class Operation(enum.StrEnum):
    """Kernel changes, as counted when made or failed."""

    TUNNEL_ENSURE = "tunnel_ensure"  # a failure of create/replace/adjust (which one is not known)
    TUNNEL_CREATE = "tunnel_create"
    TUNNEL_REPLACE = "tunnel_replace"
    TUNNEL_ADJUST = "tunnel_adjust"
    TUNNEL_DELETE = "tunnel_delete"
    ROUTE_REPLACE = "route_replace"
    ROUTE_DELETE = "route_delete"


class Repaired(enum.StrEnum):
    """Our objects found missing or changed behind our back."""

    TUNNEL = "tunnel"
    ROUTE = "route"


class SignalResult(enum.StrEnum):
    OK = "ok"
    FAILED = "failed"
