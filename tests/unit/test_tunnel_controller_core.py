"""The controller's decisions against a fake kernel adapter (golden world state):
datagrams in, kernel operations out, readiness and metrics."""

import errno
from ipaddress import IPv6Address, ip_network
from socket import AF_INET, AF_INET6

import pytest
from pyroute2.arp import ARPHRD_ETHER
from pyroute2.netlink.rtnl.ifinfmsg import IFF_UP

from announcement import encode
from bonding.plan import AddressPlan
from netlink_adapter.errors import KernelError
from netlink_adapter.events import LinkEvent, RouteEvent
from netlink_adapter.headers import LinkHeader, RouteHeader
from netlink_adapter.ip6tnl import ARPHRD_TUNNEL6
from netlink_adapter.links import Ensured, LinkFacts
from netlink_adapter.routes import RT_TABLE_MAIN, RTN_UNICAST, RouteFacts
from tunnel_controller.config import TunnelSettings
from tunnel_controller.controller import TunnelController
from tunnel_controller.desired import TunnelSpec
from tunnel_controller.netlink import Found, FoundRoute, FoundTunnel, may_break_tunnels

PLAN = AddressPlan.from_text()
LOCAL = PLAN.shoot_client(0)
A, B = PLAN.seed_client(0x0101), PLAN.seed_client(0x0102)
TA, TB = "bond0ip6tnl0101", "bond0ip6tnl0102"
KEY = b"0123456789abcdef0123456789abcdef"
NOW_MS = 1_763_900_000_000


class FakeClock:
    def __init__(self, now: float = 1000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


class FakeKernel:
    """Tunnels and routes in dicts; every change logged as an iproute2-like line."""

    def __init__(self):
        self.tunnels: dict[str, tuple[int, TunnelSpec, bool]] = {}
        self.routes: dict = {}  # dst -> (index, proto)
        self.log: list[str] = []
        self.fail: set[str] = set()
        self.expected_new: list[str] = []  # devices the controller asked for with expect_new
        self._next_index = 100

    def _check(self, op: str) -> None:
        if op in self.fail:
            raise KernelError(errno.EBUSY, f"{op} refused")

    async def bond_addresses(self):
        return []

    async def find(self) -> Found:
        names = {index: name for name, (index, _, _) in self.tunnels.items()}
        return Found(
            [FoundTunnel(name, index, spec.local, spec.remote, True, up)
             for name, (index, spec, up) in self.tunnels.items()],
            [FoundRoute(dst, index, proto) for dst, (index, proto) in self.routes.items() if index in names],
        )

    async def ensure_tunnel(self, spec: TunnelSpec, *, expect_new: bool = False):
        self._check("ensure")
        if expect_new:
            self.expected_new.append(spec.name)
        current = self.tunnels.get(spec.name)
        if current and current[1] == spec:
            if not current[2]:
                self.tunnels[spec.name] = (current[0], spec, True)
                self.log.append(f"link set {spec.name} up")
                return current[0], Ensured.ADJUSTED
            return current[0], Ensured.KEPT
        self._next_index += 1
        self.tunnels[spec.name] = (self._next_index, spec, True)
        self.log.append(f"link add {spec.name} remote {spec.remote}")
        return self._next_index, Ensured.CREATED

    async def replace_route(self, dst, index):
        self._check("replace")
        self.routes[dst] = (index, 119)
        self.log.append(f"route replace {dst} dev {self._name(index)}")

    async def delete_route(self, dst, index):
        self._check("delete")
        if self.routes.get(dst, (None,))[0] != index:
            return False
        del self.routes[dst]
        self.log.append(f"route del {dst} dev {self._name(index)}")
        return True

    async def delete_tunnel(self, name):
        self._check("delete")
        index, _, _ = self.tunnels.pop(name)
        self.routes = {dst: r for dst, r in self.routes.items() if r[0] != index}
        self.log.append(f"link del {name}")
        return True

    def _name(self, index):
        return next(name for name, (i, _, _) in self.tunnels.items() if i == index)


def link_gone(index: int, name: str) -> LinkEvent:
    return LinkEvent(LinkFacts(index, name, None, None, None, up=False, device_type=ARPHRD_TUNNEL6), deleted=True)


def link_down(index: int) -> LinkEvent:
    return LinkEvent(LinkFacts(index, "", None, False, None, up=False, device_type=ARPHRD_TUNNEL6), deleted=False)


def route_gone(dst, index: int) -> RouteEvent:
    return RouteEvent(RouteFacts(dst, index, proto=119, table=RT_TABLE_MAIN, type=RTN_UNICAST), deleted=True)


def controller(**env) -> tuple[TunnelController, FakeKernel, FakeClock]:
    settings = TunnelSettings(**{"peer_expiry": 600.0, "watchdog_grace": 0.0, **env})
    kernel, clock = FakeKernel(), FakeClock()
    ctl = TunnelController(settings, kernel, clock=clock, wall_ms=lambda: NOW_MS)
    ctl.reconciler.local = LOCAL
    return ctl, kernel, clock


def send(ctl: TunnelController, source: IPv6Address, payload: bytes | str) -> None:
    ctl.handle_datagram(payload.encode() if isinstance(payload, str) else payload, (str(source), 40000, 0, 0))


def rejected(ctl, reason: str) -> float:
    return ctl.metrics.rejected.labels(reason)._value.get()


async def test_announcement_to_tunnel_and_route():
    ctl, kernel, _ = controller()
    send(ctl, A, "10.96.0.1")
    assert kernel.log == [], "receiving never touches the kernel"
    await ctl.reconciler.reconcile()
    assert kernel.log == [f"link add {TA} remote {A}", f"route replace 10.96.0.1/32 dev {TA}"]
    assert ctl.readiness() == (True, "ok")
    kernel.log.clear()
    send(ctl, A, "10.96.0.1")
    await ctl.reconciler.reconcile()
    assert kernel.log == [], "a duplicate only refreshes"


@pytest.mark.parametrize(
    ("source", "payload", "reason"),
    [
        (PLAN.shoot_client(1), "10.96.0.1", "foreign-source"),
        (IPv6Address("2001:db8::1"), "10.96.0.1", "foreign-source"),
        (A, "10.96.0.1/32", "malformed"),
        (A, "x" * 600, "oversized"),
        (A, str(PLAN.shoot_client(1)), "bad-address"),  # would steal the route to the other vpn-shoot
        (A, "hvdp1 ips=10.96.0.1,fd8f:6d53:b97a:1::b:0", "bad-address"),
    ],
)
async def test_bad_datagrams_are_counted_and_change_nothing(source, payload, reason):
    ctl, kernel, _ = controller()
    send(ctl, source, payload)
    await ctl.reconciler.reconcile()
    assert rejected(ctl, reason) == 1
    assert (len(ctl.registry), kernel.log) == (0, [])


async def test_with_a_key_only_authenticated_fresh_datagrams_count(tmp_path):
    key = tmp_path / "key"
    key.write_bytes(KEY)
    ctl, kernel, _ = controller(announce_key_file=key)
    send(ctl, A, "10.96.0.1")
    send(ctl, A, encode([IPv6Address("fd00::1")], key=KEY, source=A, now_ms=NOW_MS - 60_000))
    send(ctl, B, encode([IPv6Address("fd00::1")], key=KEY, source=A, now_ms=NOW_MS))
    assert [rejected(ctl, r) for r in ("unauthenticated", "stale", "source-mismatch")] == [1, 1, 1]
    fresh = encode([IPv6Address("fd00::1")], key=KEY, source=A, now_ms=NOW_MS)
    send(ctl, A, fresh)
    send(ctl, A, fresh)
    assert rejected(ctl, "replayed") == 1
    await ctl.reconciler.reconcile()
    assert kernel.log == [f"link add {TA} remote {A}", f"route replace fd00::1/128 dev {TA}"]


async def test_rate_limit_and_peer_limit():
    ctl, _, clock = controller(rate_limit_per_source=1.0, rate_limit_burst=2, max_peers=1)
    for _ in range(5):
        send(ctl, A, "10.96.0.1")
    assert rejected(ctl, "rate-limited") == 3
    clock.now += 1.0
    send(ctl, A, "10.96.0.1")
    assert rejected(ctl, "rate-limited") == 3
    send(ctl, B, "10.96.0.2")
    assert rejected(ctl, "peer-limit") == 1


async def test_pod_ip_change_adds_first_and_keeps_the_tunnel():
    ctl, kernel, _ = controller()
    send(ctl, A, "hvdp1 ips=10.96.0.1,fd00::1")
    await ctl.reconciler.reconcile()
    kernel.log.clear()
    send(ctl, A, "hvdp1 ips=10.96.1.1,fd00::1")
    await ctl.reconciler.reconcile()
    assert kernel.log == [f"route replace 10.96.1.1/32 dev {TA}", f"route del 10.96.0.1/32 dev {TA}"]


async def test_failure_backs_off_reports_not_ready_then_recovers():
    ctl, kernel, clock = controller(tunnel_retry_min=2.0, tunnel_retry_max=30.0)
    kernel.fail = {"ensure"}
    send(ctl, A, "10.96.0.1")
    await ctl.reconciler.reconcile()
    ok, reason = ctl.readiness()
    assert not ok and reason.startswith("no route to kube apiserver with pod IP 10.96.0.1 (tunnel_ensure failed")
    assert ctl.metrics.failures.labels("tunnel_ensure")._value.get() == 1
    kernel.fail = set()
    clock.now += 1.0
    await ctl.reconciler.reconcile()
    assert kernel.log == [], "still in backoff"
    assert ctl.reconciler.next_pass_in(clock.now) == pytest.approx(1.0)
    clock.now += 1.0
    await ctl.reconciler.reconcile()
    assert kernel.log == [f"link add {TA} remote {A}", f"route replace 10.96.0.1/32 dev {TA}"]
    assert ctl.readiness() == (True, "ok")


async def test_expiry_deletes_the_tunnel():
    ctl, kernel, clock = controller(peer_expiry=60.0)
    send(ctl, A, "10.96.0.1")
    send(ctl, B, "10.96.0.2")
    await ctl.reconciler.reconcile()
    kernel.log.clear()
    clock.now += 30
    send(ctl, B, "10.96.0.2")
    clock.now += 30
    assert ctl.reconciler.next_pass_in(clock.now) == pytest.approx(0.01), "A is due"
    await ctl.reconciler.reconcile()
    assert kernel.log == [f"link del {TA}"]
    assert set(kernel.tunnels) == {TB} and list(kernel.routes) == [ip_network("10.96.0.2/32")]
    assert ctl.metrics.peer_events.labels("expired")._value.get() == 1


async def test_failed_delete_is_retried_with_backoff():
    ctl, kernel, clock = controller(peer_expiry=60.0, tunnel_retry_min=2.0, tunnel_retry_max=5.0,
                                    resync_interval=3600.0)
    send(ctl, A, "10.96.0.1")
    await ctl.reconciler.reconcile()
    kernel.log.clear()
    kernel.fail = {"delete"}
    clock.now += 60
    delays = []
    for _ in range(4):
        await ctl.reconciler.reconcile()
        delays.append(ctl.reconciler.next_pass_in(clock.now))
        clock.now += delays[-1]
    assert delays == pytest.approx([2.0, 4.0, 5.0, 5.0]), "doubling from TUNNEL_RETRY_MIN, capped at the max"
    assert kernel.log == [] and TA in kernel.tunnels
    kernel.fail = set()
    await ctl.reconciler.reconcile()
    assert kernel.log == [f"link del {TA}"]
    # The next failure starts over at TUNNEL_RETRY_MIN.
    send(ctl, B, "10.96.0.2")
    await ctl.reconciler.reconcile()
    kernel.fail = {"delete"}
    clock.now += 60
    await ctl.reconciler.reconcile()
    assert ctl.reconciler.next_pass_in(clock.now) == pytest.approx(2.0)


async def test_adoption_keeps_what_matches_and_leftovers_expire():
    ctl, kernel, clock = controller(peer_expiry=60.0)
    kernel.tunnels = {TA: (7, TunnelSpec(TA, LOCAL, A), True), TB: (8, TunnelSpec(TB, LOCAL, B), True)}
    kernel.routes = {ip_network("10.96.0.1/32"): (7, 119), ip_network("10.96.0.2/32"): (8, 3)}  # 3: vpn2 (boot)
    kernel.tunnels["bond0ip6tnl9999"] = (9, TunnelSpec("bond0ip6tnl9999", LOCAL, IPv6Address("2001:db8::1")), True)
    await ctl.reconciler.adopt()
    assert {p.device for p in ctl.registry.peers.values()} == {TA, TB}, "only what we would have made"
    await ctl.reconciler.reconcile()
    assert kernel.log == [f"route replace 10.96.0.2/32 dev {TB}"], "vpn2's route taken over in place"
    assert ctl.readiness() == (True, "ok")
    clock.now += 30
    send(ctl, A, "10.96.0.1")
    clock.now += 30
    await ctl.reconciler.reconcile()
    assert kernel.log[-1] == f"link del {TB}"
    assert "bond0ip6tnl9999" in kernel.tunnels


async def test_kernel_events_lead_to_repairs():
    ctl, kernel, _ = controller()
    send(ctl, A, "hvdp1 ips=10.96.0.1,fd00::1")
    await ctl.reconciler.reconcile()
    kernel.log.clear()
    index = kernel.tunnels[TA][0]
    del kernel.tunnels[TA]
    kernel.routes.clear()
    ctl.reconciler.on_kernel_event(link_gone(index, TA))
    assert ctl.readiness()[0] is False
    await ctl.reconciler.reconcile()
    assert kernel.log == [f"link add {TA} remote {A}", f"route replace 10.96.0.1/32 dev {TA}",
                          f"route replace fd00::1/128 dev {TA}"]
    kernel.log.clear()
    index = kernel.tunnels[TA][0]
    del kernel.routes[ip_network("fd00::1/128")]
    ctl.reconciler.on_kernel_event(route_gone(ip_network("fd00::1/128"), index))
    ctl.reconciler.on_kernel_event(route_gone(ip_network("10.96.9.9/32"), index))  # not ours: ignored
    kernel.tunnels[TA] = (index, kernel.tunnels[TA][1], False)
    ctl.reconciler.on_kernel_event(link_down(index))
    await ctl.reconciler.reconcile()
    assert kernel.log == [f"link set {TA} up", f"route replace 10.96.0.1/32 dev {TA}",
                          f"route replace fd00::1/128 dev {TA}"]
    assert ctl.metrics.repairs.labels("tunnel")._value.get() == 2
    assert ctl.metrics.repairs.labels("route")._value.get() == 1
    assert ctl.readiness() == (True, "ok")


async def test_only_devices_the_controller_knows_nothing_of_are_expected_to_be_new():
    ctl, kernel, _ = controller()
    kernel.tunnels = {TB: (8, TunnelSpec(TB, PLAN.shoot_client(1), B), True)}  # a leftover with another local
    await ctl.reconciler.adopt()
    send(ctl, A, "10.96.0.1")
    await ctl.reconciler.reconcile()
    assert kernel.expected_new == [TA], "the leftover is known: looked at first, not created blindly"
    index = kernel.tunnels[TA][0]
    kernel.tunnels[TA] = (index, kernel.tunnels[TA][1], False)
    ctl.reconciler.on_kernel_event(link_down(index))
    await ctl.reconciler.reconcile()
    assert kernel.expected_new == [TA], "a device set down is still known"
    del kernel.tunnels[TA]
    ctl.reconciler.on_kernel_event(link_gone(index, TA))
    await ctl.reconciler.reconcile()
    assert kernel.expected_new == [TA, TA], "a deleted device is expected to be absent"


async def test_resync_catches_what_events_missed():
    ctl, kernel, _ = controller()
    send(ctl, A, "10.96.0.1")
    await ctl.reconciler.reconcile()
    kernel.log.clear()
    del kernel.tunnels[TA]  # gone without an event
    kernel.routes.clear()
    kernel.tunnels[TB] = (50, TunnelSpec(TB, LOCAL, B), True)  # appeared: somebody else's leftover
    await ctl.reconciler.resync()
    await ctl.reconciler.reconcile()
    assert kernel.log == [f"link add {TA} remote {A}", f"route replace 10.96.0.1/32 dev {TA}"]
    assert ctl.metrics.repairs.labels("tunnel")._value.get() == 1
    assert ctl.registry.get(B).adopted, "adopted like at start: it expires unless announced"
    assert ctl.metrics.resyncs._value.get() == 1


def test_only_events_that_can_break_tunnels_are_decoded():
    wanted = may_break_tunnels(watched={7}.__contains__)

    def link(deleted: bool, index: int = 7, up: bool = False, device_type: int = ARPHRD_TUNNEL6) -> LinkHeader:
        return LinkHeader(deleted, 0, device_type, index, IFF_UP if up else 0)

    def route(deleted: bool = True, family=AF_INET, dst_len=32, table=RT_TABLE_MAIN, kind=RTN_UNICAST) -> RouteHeader:
        return RouteHeader(deleted, family, dst_len, table, 119, 0, kind, 0)

    assert wanted(link(deleted=True, index=99)), "any ip6tnl deleted: the view knows which are ours"
    assert wanted(link(deleted=False)), "ours set down"
    assert not wanted(link(deleted=False, index=99)), "someone else's set down"
    assert not wanted(link(deleted=False, up=True)), "ours changed, still up"
    assert not wanted(link(deleted=True, device_type=ARPHRD_ETHER)), "not a tunnel"
    assert wanted(route()) and wanted(route(family=AF_INET6, dst_len=128))
    assert not wanted(route(deleted=False)), "additions need no repair"
    assert not wanted(route(family=AF_INET6, dst_len=32)), "no host route"
    assert not wanted(route(dst_len=24))
    assert not wanted(route(table=255)), "the local table"
    assert not wanted(route(kind=RTN_UNICAST + 1))
