"""Peer registry with an injected clock: new, refresh, changed IP, replay, limits,
expiry, backoff, readiness."""

from ipaddress import IPv4Address, IPv6Address

import pytest

from bonding.plan import AddressPlan
from tunnel_controller.limits import SourceRateLimiter
from tunnel_controller.registry import FLAP_WINDOW, Outcome, PeerRegistry, PeerRejected, Status

PLAN = AddressPlan.from_text()
A, B, C = (PLAN.seed_client(i) for i in (0x36C3, 0x0101, 0x0202))
V4, V4_NEW, V6 = IPv4Address("10.96.3.17"), IPv4Address("10.96.3.18"), IPv6Address("fd00:10::5")


def registry(**kwargs) -> PeerRegistry:
    return PeerRegistry(**{"expiry": 600.0, "max_peers": 10, "retry_min": 1.0, "retry_max": 30.0, **kwargs})


def test_new_peer_gets_the_vpn2_device_name():
    reg = registry()
    seen = reg.observe(A, (V4,), now=100.0)
    assert seen.outcome is Outcome.NEW
    assert (seen.peer.device, seen.peer.pod_ips, seen.peer.status) == ("bond0ip6tnl36c3", (V4,), Status.PENDING)


def test_duplicates_only_refresh_last_seen():
    reg = registry()
    reg.observe(A, (V4,), now=100.0)
    reg.succeeded(A)
    seen = reg.observe(A, (V4,), now=130.0)
    assert seen.outcome is Outcome.REFRESHED
    assert (seen.peer.last_seen, seen.peer.claimed_at, seen.peer.status) == (130.0, 100.0, Status.READY)


def test_changed_pod_ip_is_a_change_and_clears_backoff():
    reg = registry()
    reg.observe(A, (V4,), now=100.0)
    reg.failed(A, "boom", now=100.0)
    seen = reg.observe(A, (V4_NEW,), now=101.0)
    assert seen.outcome is Outcome.CHANGED
    peer = seen.peer
    assert (peer.pod_ips, peer.previous_pod_ips, peer.claimed_at) == ((V4_NEW,), (V4,), 101.0)
    assert (peer.status, peer.failures, peer.held(101.0)) == (Status.PENDING, 0, False)
    # The same set in another order is no change.
    assert reg.observe(A, (V6, V4_NEW), now=102.0).outcome is Outcome.CHANGED
    assert reg.observe(A, (V4_NEW, V6), now=103.0).outcome is Outcome.REFRESHED


def test_alternating_pod_ips_are_flagged_as_flapping():
    reg = registry()
    reg.observe(A, (V4,), now=100.0)
    assert not reg.observe(A, (V4_NEW,), now=102.0).flapping
    assert reg.observe(A, (V4,), now=104.0).flapping  # back within the window: two pods, one bond address?
    assert not reg.observe(A, (V4_NEW,), now=104.0 + FLAP_WINDOW + 1).flapping


def test_replayed_or_older_timestamps_are_refused():
    reg = registry()
    reg.observe(A, (V4,), now=100.0, timestamp_ms=5000)
    for stale in (5000, 4999):
        with pytest.raises(PeerRejected) as caught:
            reg.observe(A, (V4_NEW,), now=101.0, timestamp_ms=stale)
        assert caught.value.reason == "replayed"
    assert reg.get(A).pod_ips == (V4,), "a refused datagram changes nothing"
    assert reg.get(A).last_seen == 100.0
    assert reg.observe(A, (V4,), now=102.0, timestamp_ms=5001).outcome is Outcome.REFRESHED


def test_peer_limit_refuses_new_senders_but_not_known_ones():
    reg = registry(max_peers=2)
    reg.observe(A, (V4,), now=1.0)
    reg.observe(B, (V6,), now=1.0)
    with pytest.raises(PeerRejected) as caught:
        reg.observe(C, (V4_NEW,), now=1.0)
    assert caught.value.reason == "peer-limit"
    assert reg.observe(A, (V4_NEW,), now=2.0).outcome is Outcome.CHANGED
    assert len(reg) == 2


def test_expiry_after_silence_and_next_deadline():
    reg = registry(expiry=600.0)
    reg.observe(A, (V4,), now=0.0)
    reg.observe(B, (V6,), now=100.0)
    assert reg.next_deadline(now=100.0) == 600.0
    assert reg.expire(now=599.9) == []
    gone = reg.expire(now=600.0)
    assert [peer.remote for peer in gone] == [A]
    assert reg.get(A) is None and reg.get(B) is not None
    reg.observe(B, (V6,), now=650.0)  # refresh moves the deadline
    assert reg.next_deadline(now=650.0) == 1250.0
    assert reg.expire(now=1249.0) == []


def test_adopted_peer_expires_unless_it_announces():
    reg = registry(expiry=600.0)
    reg.adopt(A, (V4,), now=10.0)
    reg.adopt(B, (V6,), now=10.0)
    assert reg.get(A).adopted
    assert reg.observe(A, (V4,), now=300.0).outcome is Outcome.REFRESHED
    assert not reg.get(A).adopted
    assert [peer.remote for peer in reg.expire(now=610.0)] == [B]


def test_backoff_doubles_and_is_capped():
    reg = registry(retry_min=1.0, retry_max=8.0)
    reg.observe(A, (V4,), now=0.0)
    delays = [reg.failed(A, "netlink said no", now=100.0) for _ in range(6)]
    assert delays == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    peer = reg.get(A)
    assert peer.held(107.9) and not peer.held(108.0)
    assert reg.held_devices(100.0) == {"bond0ip6tnl36c3"}
    assert reg.next_deadline(now=100.0) == 108.0
    assert reg.next_deadline(now=108.0) == 600.0, "a retry that is due is no future deadline"
    reg.succeeded(A)
    assert (peer.status, peer.failures, peer.error) == (Status.READY, 0, "")


def test_readiness_as_vpn2():
    reg = registry()
    assert reg.readiness() == (False, "no kube apiservers configured")
    reg.adopt(C, (), now=0.0)  # a leftover tunnel without routes is no kube-apiserver we know
    assert reg.readiness() == (False, "no kube apiservers configured")
    reg.observe(A, (V4, V6), now=0.0)
    assert reg.readiness() == (False, "no route to kube apiserver with pod IP 10.96.3.17,fd00:10::5 (pending)")
    reg.succeeded(A)
    assert reg.readiness() == (True, "ok")
    reg.observe(B, (V4_NEW,), now=0.0)
    reg.failed(B, "route_replace failed: (19, 'No such device')", now=0.0)
    assert reg.readiness() == (
        False, "no route to kube apiserver with pod IP 10.96.3.18 (route_replace failed: (19, 'No such device'))"
    )
    reg.unsettled(A)
    assert reg.readiness()[1].endswith("; 1 more")


def test_rate_limiter_token_bucket_per_source():
    limiter = SourceRateLimiter(rate=2.0, burst=3)
    assert [limiter.allow(A, 0.0) for _ in range(4)] == [True, True, True, False]
    assert limiter.allow(B, 0.0), "each source has its own bucket"
    assert not limiter.allow(A, 0.4)  # 0.8 tokens
    assert limiter.allow(A, 0.5)  # one more token after 0.5 s at 2/s
    assert [limiter.allow(A, 100.0) for _ in range(4)] == [True, True, True, False], "refill capped at burst"


def test_rate_limiter_table_is_bounded():
    limiter = SourceRateLimiter(rate=1.0, burst=1, max_sources=100)
    for i in range(1, 1001):
        limiter.allow(PLAN.seed_client(i), 0.0)
    assert len(limiter) == 100
