"""The notices of a vpn-shoot (serving, leaving): wire form and checks."""

from ipaddress import IPv6Address

import pytest

from announcement import Rejected
from announcement.notices import LEAVING, SERVING, decode_notice, encode_notice

SHOOT = IPv6Address("fd8f:6d53:b97a:1::b:1")
KEY = b"k" * 32


@pytest.mark.parametrize("verb", [SERVING, LEAVING])
def test_round_trip_plain_and_authenticated(verb):
    assert encode_notice(verb, SHOOT, 1000) == f"hvdp1 {verb} src=fd8f:6d53:b97a:1::b:1 ts=1000".encode()
    assert decode_notice(encode_notice(verb, SHOOT, 1000), source=SHOOT, key=None, now_ms=1500) == (verb, 1000)
    assert decode_notice(encode_notice(verb, SHOOT, 1000, KEY), source=SHOOT, key=KEY, now_ms=1500) == (verb, 1000)


def test_an_unknown_verb_is_neither_sent_nor_read():
    with pytest.raises(ValueError):
        encode_notice("staying", SHOOT, 1000)
    with pytest.raises(Rejected) as raised:
        decode_notice(b"hvdp1 staying src=fd8f:6d53:b97a:1::b:1 ts=1000", source=SHOOT, key=None, now_ms=1000)
    assert raised.value.reason == "malformed"


def test_the_mac_covers_the_verb():
    signed = encode_notice(SERVING, SHOOT, 1000, KEY)
    with pytest.raises(Rejected) as raised:
        decode_notice(signed.replace(b"serving", b"leaving"), source=SHOOT, key=KEY, now_ms=1000)
    assert raised.value.reason == "bad-mac"


@pytest.mark.parametrize(("data", "key", "source", "reason"), [
    (encode_notice(LEAVING, SHOOT, 1000), KEY, SHOOT, "unauthenticated"),
    (encode_notice(LEAVING, SHOOT, 1000, b"x" * 32), KEY, SHOOT, "bad-mac"),
    (encode_notice(LEAVING, SHOOT, 1000), None, IPv6Address("fd8f:6d53:b97a:1::b:0"), "source-mismatch"),
    (encode_notice(SERVING, SHOOT, 1000 - 60_000), None, SHOOT, "stale"),
    (b"hvdp1 leaving src=x ts=1", None, SHOOT, "malformed"),
    (b"10.96.3.17", None, SHOOT, "malformed"),
    (b"hvdp1", None, SHOOT, "malformed"),
    (b"hvdp1 leaving " + b"a" * 600, None, SHOOT, "oversized"),
])
def test_bad_notices_are_named(data, key, source, reason):
    with pytest.raises(Rejected) as raised:
        decode_notice(data, source=source, key=key, now_ms=1000)
    assert raised.value.reason == reason
