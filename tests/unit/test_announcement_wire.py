"""Announcement wire formats: round trips, and every malformed form rejected."""

from ipaddress import IPv4Address, IPv6Address

import pytest

from announcement import Rejected, decode, encode, load_key

SRC = IPv6Address("fd8f:6d53:b97a:1::a:36c3")
V4 = IPv4Address("10.96.3.17")
V6 = IPv6Address("fd00:10::5")
KEY = b"0123456789abcdef0123456789abcdef"
NOW = 1_763_900_000_000


def test_vpn2_form_is_the_bare_ip():
    assert encode([V4]) == b"10.96.3.17"
    assert encode([V6, V4]) == b"fd00:10::5"  # only the first: vpn2 carries one
    assert decode(b"10.96.3.17", source=SRC).pod_ips == (V4,)
    assert decode(b"241.96.3.17", source=SRC).pod_ips == (IPv4Address("241.96.3.17"),)  # NAT-mapped
    assert decode(b"fd00:10::5", source=SRC).form == "vpn2"
    assert decode(b"10.96.3.17\n", source=SRC).pod_ips == (V4,)  # trailing newline tolerated


def test_extended_form_round_trip():
    data = encode([V4, V6], extended=True)
    assert data == b"hvdp1 ips=10.96.3.17,fd00:10::5"
    result = decode(data, source=SRC)
    assert (result.pod_ips, result.form) == ((V4, V6), "extended")


def test_authenticated_round_trip():
    data = encode([V4, V6], key=KEY, source=SRC, now_ms=NOW)
    assert data.startswith(b"hvdp1 ips=10.96.3.17,fd00:10::5 src=fd8f:6d53:b97a:1::a:36c3 ts=1763900000000 mac=")
    result = decode(data, source=SRC, key=KEY, now_ms=NOW + 1500)
    assert (result.pod_ips, result.form, result.timestamp_ms) == ((V4, V6), "authenticated", NOW)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "malformed"),
        (b"   ", "malformed"),
        (b"x" * 513, "oversized"),
        (b"10.96.3.17 10.96.3.18", "malformed"),
        (b"10.96.3.17,fd00::1", "malformed"),
        (b"10.96.3.256", "malformed"),
        (b"10.96.3", "malformed"),
        (b"not-an-ip", "malformed"),
        (b"\xff\xfe10.0.0.1", "malformed"),
        (b"10.0.0.1\x00", "malformed"),
        (b"0.0.0.0", "bad-address"),
        (b"::", "bad-address"),
        (b"127.0.0.1", "bad-address"),
        (b"::1", "bad-address"),
        (b"224.0.0.1", "bad-address"),
        (b"ff02::1", "bad-address"),
        (b"fe80::1", "bad-address"),
        (b"169.254.1.1", "bad-address"),
        (b"255.255.255.255", "bad-address"),
        (b"::ffff:10.0.0.1", "bad-address"),
        (b"hvdp1", "malformed"),
        (b"hvdp1 ", "malformed"),
        (b"hvdp1 ips=", "malformed"),
        (b"hvdp1 ips=10.0.0.1,10.0.0.2", "malformed"),
        (b"hvdp1 ips=10.0.0.1,fd00::1,fd00::2", "malformed"),
        (b"hvdp1 ips=10.0.0.1 extra=1", "malformed"),
        (b"hvdp1 ips=10.0.0.1  ", "malformed"),
        (b"hvdp1 src=fd00::1 ips=10.0.0.1", "malformed"),
        (b"hvdp1 ips=10.0.0.1 src=fd00::1 ts=1 mac=00", "unauthenticated"),  # no key to check it
    ],
)
def test_malformed_without_key(data, reason):
    with pytest.raises(Rejected) as caught:
        decode(data, source=SRC)
    assert caught.value.reason == reason


def test_key_requires_authentication():
    for data in (encode([V4]), encode([V4], extended=True)):
        with pytest.raises(Rejected) as caught:
            decode(data, source=SRC, key=KEY, now_ms=NOW)
        assert caught.value.reason == "unauthenticated"


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda d: d.replace(b"10.96.3.17", b"10.96.3.18"), "bad-mac"),  # forged payload
        (lambda d: d[:-1] + (b"0" if d[-1:] != b"0" else b"1"), "bad-mac"),  # forged tag
        (lambda d: d.replace(b"ts=1763900000000", b"ts=1763900009999"), "bad-mac"),
    ],
)
def test_forgeries_rejected(mutate, reason):
    data = mutate(encode([V4], key=KEY, source=SRC, now_ms=NOW))
    with pytest.raises(Rejected) as caught:
        decode(data, source=SRC, key=KEY, now_ms=NOW)
    assert caught.value.reason == reason


def test_wrong_key_rejected():
    data = encode([V4], key=b"another key of sixteen bytes", source=SRC, now_ms=NOW)
    with pytest.raises(Rejected) as caught:
        decode(data, source=SRC, key=KEY, now_ms=NOW)
    assert caught.value.reason == "bad-mac"


def test_replayed_from_another_source_rejected():
    data = encode([V4], key=KEY, source=SRC, now_ms=NOW)
    with pytest.raises(Rejected) as caught:
        decode(data, source=IPv6Address("fd8f:6d53:b97a:1::a:1"), key=KEY, now_ms=NOW)
    assert caught.value.reason == "source-mismatch"


@pytest.mark.parametrize("skew_ms", [-30_001, 30_001, 10**9])
def test_stale_rejected(skew_ms):
    data = encode([V4], key=KEY, source=SRC, now_ms=NOW)
    with pytest.raises(Rejected) as caught:
        decode(data, source=SRC, key=KEY, now_ms=NOW + skew_ms)
    assert caught.value.reason == "stale"


def test_load_key(tmp_path):
    path = tmp_path / "key"
    path.write_bytes(KEY + b"\n")
    assert load_key(path) == KEY
    path.write_bytes(b"short\n")
    with pytest.raises(ValueError, match="at least 16"):
        load_key(path)
    with pytest.raises(ValueError, match="cannot read key file"):
        load_key(tmp_path / "missing")
