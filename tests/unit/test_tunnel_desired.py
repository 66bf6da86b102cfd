"""Desired state and plan: one tunnel per peer, host routes, adds before deletes."""

from ipaddress import IPv4Address, IPv6Address, ip_network

from bonding.plan import AddressPlan
from tunnel_controller.desired import (
    DeleteRoute,
    DeleteTunnel,
    EnsureTunnel,
    KernelView,
    ReplaceRoute,
    RouteEntry,
    TunnelSpec,
    desired_state,
    plan,
)
from tunnel_controller.registry import PeerRegistry

PLAN = AddressPlan.from_text()
LOCAL = PLAN.shoot_client(0)
A, B = PLAN.seed_client(0x0101), PLAN.seed_client(0x0102)
TA, TB = "bond0ip6tnl0101", "bond0ip6tnl0102"
PROTO = 119


def net(text: str):
    return ip_network(text)


def render(steps) -> list[str]:
    """Steps as iproute2-like lines, for whole-plan comparisons."""
    lines = []
    for step in steps:
        if isinstance(step, EnsureTunnel):
            lines.append(f"tunnel {step.spec.name} remote {step.spec.remote}")
        elif isinstance(step, ReplaceRoute):
            lines.append(f"route replace {step.dst} dev {step.device}")
        elif isinstance(step, DeleteRoute):
            lines.append(f"route del {step.dst} dev {step.device}")
        elif isinstance(step, DeleteTunnel):
            lines.append(f"link del {step.name}")
    return lines


def peers(*announcements):
    reg = PeerRegistry(expiry=600, max_peers=10)
    for now, remote, ips in announcements:
        reg.observe(remote, tuple(map(_ip, ips)), now=now)
    return reg.peers.values()


def _ip(text):
    return IPv6Address(text) if ":" in text else IPv4Address(text)


def view_of(desired, proto=PROTO) -> KernelView:
    """A kernel that has exactly ``desired``."""
    view = KernelView(tunnels=dict(desired.tunnels))
    for index, name in enumerate(desired.tunnels, start=10):
        view.track(name, index)
    view.routes = {dst: RouteEntry(device, proto) for dst, device in desired.routes.items()}
    return view


def test_one_tunnel_per_peer_and_a_host_route_per_pod_ip():
    desired = desired_state(peers((1, A, ["10.96.0.1", "fd00:96::1"]), (1, B, ["10.96.0.2"])), LOCAL)
    assert desired.tunnels == {TA: TunnelSpec(TA, LOCAL, A), TB: TunnelSpec(TB, LOCAL, B)}
    assert desired.routes == {net("10.96.0.1/32"): TA, net("fd00:96::1/128"): TA, net("10.96.0.2/32"): TB}
    assert render(plan(desired, KernelView(), PROTO)) == [
        f"tunnel {TA} remote {A}",
        f"route replace 10.96.0.1/32 dev {TA}",
        f"route replace fd00:96::1/128 dev {TA}",
        f"tunnel {TB} remote {B}",
        f"route replace 10.96.0.2/32 dev {TB}",
    ]


def test_nothing_to_do_when_the_kernel_matches():
    desired = desired_state(peers((1, A, ["10.96.0.1"])), LOCAL)
    assert plan(desired, view_of(desired), PROTO) == []


def test_adopted_routes_of_another_protocol_are_taken_over_in_place():
    desired = desired_state(peers((1, A, ["10.96.0.1"])), LOCAL)
    assert render(plan(desired, view_of(desired, proto=3), PROTO)) == [f"route replace 10.96.0.1/32 dev {TA}"]


def test_changed_pod_ip_is_make_before_break():
    old = desired_state(peers((1, A, ["10.96.0.1", "fd00:96::1"])), LOCAL)
    new = desired_state(peers((1, A, ["10.96.1.1", "fd00:96::1"])), LOCAL)
    assert render(plan(new, view_of(old), PROTO)) == [
        f"route replace 10.96.1.1/32 dev {TA}",
        f"route del 10.96.0.1/32 dev {TA}",
    ]


def test_a_recreated_tunnel_gets_all_its_routes_back():
    desired = desired_state(peers((1, A, ["10.96.0.1", "fd00:96::1"])), LOCAL)
    view = view_of(desired)
    del view.tunnels[TA]  # e.g. set down, or wrong attributes
    assert render(plan(desired, view, PROTO)) == [
        f"tunnel {TA} remote {A}",
        f"route replace 10.96.0.1/32 dev {TA}",
        f"route replace fd00:96::1/128 dev {TA}",
    ]


def test_a_gone_peer_loses_its_tunnel_after_everything_is_added():
    before = desired_state(peers((1, A, ["10.96.0.1"]), (1, B, ["10.96.0.2"])), LOCAL)
    after = desired_state(peers((1, B, ["10.96.0.2"]), (2, PLAN.seed_client(0x0103), ["10.96.0.3"])), LOCAL)
    assert render(plan(after, view_of(before), PROTO)) == [
        f"tunnel bond0ip6tnl0103 remote {PLAN.seed_client(0x0103)}",
        "route replace 10.96.0.3/32 dev bond0ip6tnl0103",
        f"link del {TA}",  # its route goes with it
    ]


def test_a_contested_pod_ip_goes_to_the_newer_claim():
    # A kube-apiserver replaced by one that reuses its pod IP from another bond address.
    desired = desired_state(peers((1, A, ["10.96.0.1"]), (5, B, ["10.96.0.1"])), LOCAL)
    assert desired.routes == {net("10.96.0.1/32"): TB}
    assert desired.contested == {net("10.96.0.1/32")}
    before = desired_state(peers((1, A, ["10.96.0.1"])), LOCAL)
    view = view_of(before)
    assert render(plan(desired, view, PROTO)) == [
        f"tunnel {TB} remote {B}",
        f"route replace 10.96.0.1/32 dev {TB}",  # moves it; nothing to delete
    ]


def test_held_devices_are_left_alone():
    old = desired_state(peers((1, A, ["10.96.0.1"])), LOCAL)
    new = desired_state(peers((1, A, ["10.96.1.1"]), (1, B, ["10.96.0.2"])), LOCAL)
    assert render(plan(new, view_of(old), PROTO, held={TA})) == [
        f"tunnel {TB} remote {B}",
        f"route replace 10.96.0.2/32 dev {TB}",
    ]


def test_view_forgets_routes_with_their_device():
    desired = desired_state(peers((1, A, ["10.96.0.1"]), (1, B, ["10.96.0.2"])), LOCAL)
    view = view_of(desired)
    view.forget_tunnel(TA)
    assert set(view.tunnels) == {TB} and set(view.indexes) == {TB}
    assert view.routes == {net("10.96.0.2/32"): RouteEntry(TB, PROTO)}
    assert view.device_of(10) is None and view.device_of(11) == TB
