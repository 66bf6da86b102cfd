"""The notices a vpn-shoot sends the kube-apiservers it knows.

One line of ASCII in one UDP datagram from the vpn-shoot's bond address to a
kube-apiserver's bond address, port ``NOTICE_PORT`` (only our
path-controller listens there; vpn2's ignores it)::

    hvdp1 <verb> src=<sender bond address> ts=<unix ms>[ mac=<hex>]

``serving``
    every ``SERVING_EVERY`` while this vpn-shoot has the kube-apiserver's
    tunnel and back-route in place (and at once when they are new): it can
    carry that kube-apiserver's traffic. A vpn-shoot that answers probes
    but does not serve yet (its pod just started) takes no traffic.
``leaving``
    while it drains after SIGTERM: send no new connections here.

``mac`` = HMAC-SHA256(key, every byte before `` mac=``) when a key is
configured; the receiver then accepts nothing else. ``src`` must be the
address the datagram came from, ``ts`` within ``max_age_ms`` of now.
"""

from __future__ import annotations

import hmac
from ipaddress import IPv6Address

from announcement.wire import MAGIC, MAX_DATAGRAM, Rejected, _mac

NOTICE_PORT = 5401
SERVING, LEAVING = "serving", "leaving"
VERBS = (SERVING, LEAVING)
SERVING_EVERY = 1.0  # seconds between two serving notices to one kube-apiserver


def encode_notice(verb: str, source: IPv6Address, now_ms: int, key: bytes | None = None) -> bytes:
    if verb not in VERBS:
        raise ValueError(f"unknown notice {verb!r}")
    text = f"{MAGIC} {verb} src={source} ts={now_ms}"
    if key is not None:
        text += f" mac={_mac(key, text.encode('ascii'))}"
    return text.encode("ascii")


def decode_notice(
    data: bytes, *, source: IPv6Address, key: bytes | None, now_ms: int, max_age_ms: int = 30_000
) -> tuple[str, int]:
    """(verb, timestamp) of the notice; Rejected (with a metric label as reason) if it must be ignored."""
    if len(data) > MAX_DATAGRAM:
        raise Rejected("oversized", f"{len(data)} bytes")
    try:
        words = data.decode("ascii").split(" ")
    except UnicodeDecodeError:
        raise Rejected("malformed", "not ASCII") from None
    if len(words) < 2 or words[0] != MAGIC or words[1] not in VERBS:
        raise Rejected("malformed", f"not a notice: {data[:32]!r}")
    fields = dict(word.partition("=")[::2] for word in words[2:])
    names = [word.partition("=")[0] for word in words[2:]]
    if names not in (["src", "ts"], ["src", "ts", "mac"]):
        raise Rejected("malformed", f"unexpected fields {names[:6]}")
    if key is not None:
        if "mac" not in fields:
            raise Rejected("unauthenticated", "no mac while a key is configured")
        signed = data.decode("ascii").rpartition(" mac=")[0]
        if not hmac.compare_digest(_mac(key, signed.encode("ascii")), fields["mac"]):
            raise Rejected("bad-mac")
    try:
        claimed, timestamp = IPv6Address(fields["src"]), int(fields["ts"])
    except ValueError:
        raise Rejected("malformed", "bad src or ts") from None
    if claimed != source:
        raise Rejected("source-mismatch", f"signed for {claimed}, sent from {source}")
    if abs(now_ms - timestamp) > max_age_ms:
        raise Rejected("stale", f"timestamp {(timestamp - now_ms) / 1000:+.1f} s from now")
    return words[1], timestamp
