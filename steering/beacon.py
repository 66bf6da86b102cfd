"""The server beacon: one Ethernet broadcast per OpenVPN server and interval (pure).

Every pod with a daemon of ours sends one on each of its taps with carrier
(backup slaves included), so every other client of that server hears it:
OpenVPN's server floods broadcasts to all its clients. It says who sends it,
through which server, where the sender's bond is, which of its taps have
carrier and which pods it hears through this server. Its source MAC is the
sender's bond MAC, so every server learns every pod's MAC even on the server
the pod's bond does not use (what makes a split-tolerant bond reachable there).

Frame: dst ff:ff:ff:ff:ff:ff, src bond MAC, ethertype 0x88B5 (IEEE 802 local
experimental; vpn2's pods drop it, no stack takes it), then::

    "HVDPB" version(1) flags(1) length(2) server(1) active(1) carriers(1) seq(4)
    sender(16) heard-count(1) heard(4 each: the low 32 bits of a bond address)
    [authenticated: timestamp ms(8) HMAC-SHA256(16, over everything before)]

``active`` is 0xFF when the bond has no active slave. Flags: draining (0x01),
authenticated (0x02), the sender reaches all its peers through server 0 (0x04). The low 32 bits name a
peer inside VPN_NETWORK (a /96), see bonding/plan.py.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from dataclasses import dataclass, field
from ipaddress import IPv6Address, IPv6Network

ETHERTYPE = 0x88B5
BROADCAST = b"\xff" * 6
MAGIC = b"HVDPB"
VERSION = 1
FLAG_DRAINING = 0x01
FLAG_AUTHENTICATED = 0x02
FLAG_HOME_REACHES_ALL = 0x04
NO_SERVER = 0xFF
MAX_HEARD = 64
MAC_BYTES = 16

_HEAD = struct.Struct("!5sBBHBBBI16sB")  # magic .. heard-count
_TRAILER = struct.Struct("!Q16s")  # timestamp ms, truncated HMAC


# Where the byte that tells a kube-apiserver's bond address from a vpn-shoot's sits in a
# frame (Ethernet header, the head's fields before the sender, then its byte 13: bonding/plan.py).
SENDER_OFFSET = 14 + struct.calcsize(_HEAD.format[: _HEAD.format.index("16s")])
ROLE_BYTE = 13


def peers_only_filter(peer_role_byte: int) -> bytes:
    """A classic BPF program (struct sock_filter[]) that passes only frames whose sender has
    ``peer_role_byte``: a pod's socket then never wakes for beacons of its own kind, which
    tell it nothing (a kube-apiserver hears every other one through each server)."""
    load_byte, jump_if_equal, give = 0x30, 0x15, 0x06
    program = [
        (load_byte, 0, 0, SENDER_OFFSET + ROLE_BYTE),
        (jump_if_equal, 0, 1, peer_role_byte),
        (give, 0, 0, 0xFFFF),  # the whole frame (beacons are far shorter)
        (give, 0, 0, 0),  # nothing
    ]
    return b"".join(struct.pack("HBBI", *instruction) for instruction in program)


class BadBeacon(ValueError):
    """A frame that is no valid beacon; ``reason`` is a bounded metric label."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class Beacon:
    sender: IPv6Address
    server: int  # the server this copy was sent through
    active: int | None  # the server the sender's bond uses
    carriers: frozenset[int]  # servers the sender's taps have carrier to
    heard: frozenset[IPv6Address] = field(default_factory=frozenset)  # pods it hears through ``server``
    seq: int = 0
    draining: bool = False
    home_reaches_all: bool = False  # the sender reaches every one of its peers through server 0
    timestamp_ms: int | None = None  # set on authenticated beacons


def encode(beacon: Beacon, source_mac: bytes, *, key: bytes | None = None, now_ms: int = 0) -> bytes:
    """The whole Ethernet frame."""
    heard = sorted(beacon.heard)[:MAX_HEARD]
    flags = (
        (FLAG_DRAINING if beacon.draining else 0) | (FLAG_AUTHENTICATED if key else 0)
        | (FLAG_HOME_REACHES_ALL if beacon.home_reaches_all else 0)
    )
    body_length = _HEAD.size + 4 * len(heard) + (_TRAILER.size if key else 0)
    head = _HEAD.pack(
        MAGIC, VERSION, flags, body_length, beacon.server,
        NO_SERVER if beacon.active is None else beacon.active,
        sum(1 << s for s in beacon.carriers if s < 8), beacon.seq & 0xFFFFFFFF,
        beacon.sender.packed, len(heard),
    )
    body = head + b"".join(int(peer).to_bytes(16, "big")[12:] for peer in heard)
    frame = BROADCAST + source_mac + ETHERTYPE.to_bytes(2, "big") + body
    if key:
        stamp = struct.pack("!Q", now_ms)
        frame += stamp + _mac(key, frame[14:] + stamp)
    return frame


def decode(frame: bytes, network: IPv6Network, *, key: bytes | None = None) -> Beacon:
    """Parse a received frame (Ethernet header included); BadBeacon if it is not one of ours,
    or not authenticated when ``key`` is set."""
    if len(frame) < 14 + _HEAD.size or frame[12:14] != ETHERTYPE.to_bytes(2, "big"):
        raise BadBeacon("malformed", "too short or not our ethertype")
    body = frame[14:]
    magic, version, flags, length, server, active, carriers, seq, sender, count = _HEAD.unpack_from(body)
    if magic != MAGIC or version != VERSION:
        raise BadBeacon("malformed", f"magic {magic!r} version {version}")
    if count > MAX_HEARD or length > len(body) or length != _HEAD.size + 4 * count + (
        _TRAILER.size if flags & FLAG_AUTHENTICATED else 0
    ):
        raise BadBeacon("malformed", f"length {length} for {count} peers")
    body = body[:length]  # Ethernet may pad short frames
    timestamp = None
    if key is not None:
        if not flags & FLAG_AUTHENTICATED:
            raise BadBeacon("unauthenticated")
        timestamp, received = _TRAILER.unpack_from(body, length - _TRAILER.size)
        if not hmac.compare_digest(received, _mac(key, body[: length - MAC_BYTES])):
            raise BadBeacon("bad-mac")
    base = int(network.network_address)
    heard = frozenset(
        IPv6Address(base | int.from_bytes(body[_HEAD.size + 4 * i: _HEAD.size + 4 * i + 4], "big"))
        for i in range(count)
    )
    return Beacon(
        sender=IPv6Address(sender),
        server=server,
        active=None if active == NO_SERVER else active,
        carriers=frozenset(s for s in range(8) if carriers & (1 << s)),
        heard=heard,
        seq=seq,
        draining=bool(flags & FLAG_DRAINING),
        home_reaches_all=bool(flags & FLAG_HOME_REACHES_ALL),
        timestamp_ms=timestamp,
    )


def _mac(key: bytes, data: bytes) -> bytes:
    return hmac.new(key, data, hashlib.sha256).digest()[:MAC_BYTES]
