"""The leaving notice of a draining vpn-shoot: wire form and checks."""

from ipaddress import IPv6Address

import pytest

from announcement import Rejected
from announcement.leaving import decode_leaving, encode_leaving

SHOOT = IPv6Address("fd8f:6d53:b97a:1::b:1")
KEY = b"k" * 32


def test_round_trip_plain_and_authenticated():
    assert encode_leaving(SHOOT, 1000) == b"hvdp1 leaving src=fd8f:6d53:b97a:1::b:1 ts=1000"
    assert decode_leaving(encode_leaving(SHOOT, 1000), source=SHOOT, key=None, now_ms=1500) == 1000
    assert decode_leaving(encode_leaving(SHOOT, 1000, KEY), source=SHOOT, key=KEY, now_ms=1500) == 1000


@pytest.mark.parametrize(("data", "key", "source", "reason"), [
    (encode_leaving(SHOOT, 1000), KEY, SHOOT, "unauthenticated"),
    (encode_leaving(SHOOT, 1000, b"x" * 32), KEY, SHOOT, "bad-mac"),
    (encode_leaving(SHOOT, 1000), None, IPv6Address("fd8f:6d53:b97a:1::b:0"), "source-mismatch"),
    (encode_leaving(SHOOT, 1000 - 60_000), None, SHOOT, "stale"),
    (b"hvdp1 leaving src=x ts=1", None, SHOOT, "malformed"),
    (b"10.96.3.17", None, SHOOT, "malformed"),
    (b"hvdp1 leaving " + b"a" * 600, None, SHOOT, "oversized"),
])
def test_bad_notices_are_named(data, key, source, reason):
    with pytest.raises(Rejected) as raised:
        decode_leaving(data, source=source, key=key, now_ms=1000)
    assert raised.value.reason == reason
