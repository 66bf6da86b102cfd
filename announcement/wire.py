"""Wire format of the kube-apiserver announcement.

Three forms, all one line of ASCII in one UDP datagram:

``vpn2``
    the pod IP and nothing else, e.g. ``10.96.3.17`` or ``fd00:10::5``. What
    gardener/vpn2 sends and reads; our default.
``extended`` (opt-in)
    ``hvdp1 ips=10.96.3.17,fd00:10::5``: both pod IPs of a dual-stack pod.
``authenticated`` (opt-in, needs a shared key)
    ``hvdp1 ips=<ips> src=<sender bond address> ts=<unix ms> mac=<hex>``
    where mac = HMAC-SHA256(key, every byte before `` mac=``), 64 lowercase
    hex digits. ``src`` binds the datagram to the address it must come from;
    ``ts`` lets the receiver drop stale and replayed datagrams.

A vpn2 tunnel-controller cannot read the ``hvdp1`` forms, so a
path-controller only sends them when configured to.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address, ip_address
from pathlib import Path

ANNOUNCE_PORT = 5400
MAX_DATAGRAM = 512
MAGIC = "hvdp1"
MIN_KEY_BYTES = 16

IPAddress = IPv4Address | IPv6Address


class Rejected(ValueError):
    """An announcement that must change nothing; ``reason`` is a short metric label."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class Announcement:
    pod_ips: tuple[IPAddress, ...]
    form: str  # "vpn2" | "extended" | "authenticated"
    timestamp_ms: int | None = None


def _pod_ip(text: str) -> IPAddress:
    try:
        address = ip_address(text)
    except ValueError:
        raise Rejected("malformed", f"not an IP address: {text[:64]!r}") from None
    if isinstance(address, IPv6Address) and address.ipv4_mapped is not None:
        raise Rejected("bad-address", f"IPv4-mapped address {address}")
    if (
        address.is_unspecified
        or address.is_multicast
        or address.is_loopback
        or address.is_link_local
        or address == IPv4Address("255.255.255.255")
    ):
        raise Rejected("bad-address", f"{address} cannot be a pod IP")
    return address


def _pod_ips(text: str) -> tuple[IPAddress, ...]:
    ips = tuple(_pod_ip(part) for part in text.split(","))
    if len(ips) > 2 or len({ip.version for ip in ips}) != len(ips):
        raise Rejected("malformed", "at most one IPv4 and one IPv6 pod IP")
    return ips


def _mac(key: bytes, signed: bytes) -> str:
    return hmac.new(key, signed, hashlib.sha256).hexdigest()


def encode(
    pod_ips: tuple[IPAddress, ...] | list[IPAddress],
    *,
    extended: bool = False,
    key: bytes | None = None,
    source: IPv6Address | None = None,
    now_ms: int | None = None,
) -> bytes:
    """The datagram for ``pod_ips``: vpn2 form unless ``extended`` or a ``key`` is given."""
    if not pod_ips:
        raise ValueError("no pod IP to announce")
    if key is None and not extended:
        return str(pod_ips[0]).encode("ascii")
    text = f"{MAGIC} ips={','.join(str(ip) for ip in pod_ips)}"
    if key is not None:
        if source is None or now_ms is None:
            raise ValueError("an authenticated announcement needs the source address and a timestamp")
        text += f" src={source} ts={now_ms}"
        text += f" mac={_mac(key, text.encode('ascii'))}"
    return text.encode("ascii")


def decode(
    data: bytes,
    *,
    source: IPv6Address,
    key: bytes | None = None,
    now_ms: int | None = None,
    max_age_ms: int = 30_000,
) -> Announcement:
    """Parse and check one datagram from ``source``; raise Rejected if it must be ignored.

    With a ``key``, only authenticated datagrams whose ``src`` is ``source``
    and whose timestamp lies within ``max_age_ms`` of ``now_ms`` pass.
    """
    if len(data) > MAX_DATAGRAM:
        raise Rejected("oversized", f"{len(data)} bytes")
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        raise Rejected("malformed", "not ASCII") from None
    if not text.startswith(MAGIC + " "):
        if key is not None:
            raise Rejected("unauthenticated", "vpn2 form while a key is configured")
        stripped = text.strip()
        if not stripped or any(c.isspace() or c == "," for c in stripped):
            raise Rejected("malformed", f"not one IP address: {text[:64]!r}")
        return Announcement((_pod_ip(stripped),), "vpn2")

    fields = text.split(" ")[1:]
    pairs = []
    for field in fields:
        name, sep, value = field.partition("=")
        if not sep or not value:
            raise Rejected("malformed", f"bad field {field[:32]!r}")
        pairs.append((name, value))
    names = [name for name, _ in pairs]
    values = dict(pairs)
    if names == ["ips"]:
        if key is not None:
            raise Rejected("unauthenticated", "no mac while a key is configured")
        return Announcement(_pod_ips(values["ips"]), "extended")
    if names != ["ips", "src", "ts", "mac"]:
        raise Rejected("malformed", f"unexpected fields {names[:6]}")
    ips = _pod_ips(values["ips"])
    if key is None:
        raise Rejected("unauthenticated", "authenticated form but no key configured to check it")
    signed, _, _ = text.rpartition(" mac=")
    if not hmac.compare_digest(_mac(key, signed.encode("ascii")), values["mac"]):
        raise Rejected("bad-mac")
    try:
        claimed = IPv6Address(values["src"])
        timestamp = int(values["ts"])
    except ValueError:
        raise Rejected("malformed", "bad src or ts") from None
    if claimed != source:
        raise Rejected("source-mismatch", f"signed for {claimed}, sent from {source}")
    if now_ms is not None and abs(now_ms - timestamp) > max_age_ms:
        raise Rejected("stale", f"timestamp {(timestamp - now_ms) / 1000:+.1f} s from now")
    return Announcement(ips, "authenticated", timestamp)


def load_key(path: str | Path) -> bytes:
    """The shared key from a file (surrounding whitespace ignored); ValueError if unusable."""
    try:
        key = Path(path).read_bytes().strip()
    except OSError as exc:
        raise ValueError(f"cannot read key file {path}: {exc.strerror}") from None
    if len(key) < MIN_KEY_BYTES:
        raise ValueError(f"key file {path} holds {len(key)} bytes; at least {MIN_KEY_BYTES} are needed")
    return key
