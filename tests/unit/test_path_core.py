"""The path-controller core driven as the daemon drives it: events in, effects out.

The golden test plays a scripted failure sequence against a fake kernel and
compares the whole transcript (what was logged, what the routes look like at
each checkpoint) with the one below; the other tests pin single decisions.
"""

import logging
from ipaddress import ip_network

import pytest

from benchmarks.vpn2_profile import Vpn2Rounds
from netlink_adapter.ip6tnl import ARPHRD_TUNNEL6
from netlink_adapter.links import LinkFacts
from path_controller.core import (
    BondMoved,
    CoreConfig,
    Leaving,
    PeerAlive,
    Answered,
    LinkChanged,
    Log,
    PathCore,
    ReadRoutes,
    RouteChanged,
    RoutesRead,
    RoutesWritten,
    SendProbe,
    Serving,
    Started,
    Tick,
    WriteRoutes,
)
from path_controller.probe import Health, ProbeTiming
from path_controller.probing import Probing
from path_controller.routes import Route
from tests.unit.pathsim import NETWORKS, PROTOCOL, TUNNEL_INDEX, FakeKernel, Path, Simulation, config

GOLDEN = """\
  0.03 info    target up {'target': 0, 'old': 'unknown', 'reason': '3 answers in a row'}
  0.03 warning primary switched {'old': None, 'new': 0, 'reason': 'initial', 'device': 'bond0-ip6tnl0'}
  0.03 info    target up {'target': 1, 'old': 'unknown', 'reason': '3 answers in a row'}
  0.03 info    routes switched {'device': 'bond0-ip6tnl0', 'networks': ['100.64.0.0/13', '100.96.0.0/11', 'fd00:96::/56']}
--- started @ 2.00
100.64.0.0/13 dev bond0-ip6tnl0 proto 118
100.96.0.0/11 dev bond0-ip6tnl0 proto 118
fd00:96::/56 dev bond0-ip6tnl0 proto 118
  3.26 warning target down {'target': 0, 'old': 'suspect', 'reason': 'no answer for 0.35 s, 15 probes lost (lost after 0.025 s, down after 0.35 s)'}
  3.26 warning primary switched {'old': 0, 'new': 1, 'reason': 'primary down', 'device': 'bond0-ip6tnl1'}
  3.26 info    routes switched {'device': 'bond0-ip6tnl1', 'networks': ['100.64.0.0/13', '100.96.0.0/11', 'fd00:96::/56']}
--- vpn-shoot 0 died at 3.0 @ 5.00
100.64.0.0/13 dev bond0-ip6tnl1 proto 118
100.96.0.0/11 dev bond0-ip6tnl1 proto 118
fd00:96::/56 dev bond0-ip6tnl1 proto 118
  6.20 info    target up {'target': 0, 'old': 'rising', 'reason': '3 answers in a row'}
  8.00 info    routes restored {'device': 'bond0-ip6tnl1', 'networks': ['100.96.0.0/11']}
--- back at 6.0, no fail-back; a route deleted at 8.0 is restored @ 8.50
100.64.0.0/13 dev bond0-ip6tnl1 proto 118
100.96.0.0/11 dev bond0-ip6tnl1 proto 118
fd00:96::/56 dev bond0-ip6tnl1 proto 118
 10.00 info    bond failing over; no vpn-shoot is called down while the paths settle {'event': 'active_slave_changed', 'device': 'bond0'}
--- primary silent 10.0-10.7 during a bond failover: held @ 13.00
100.64.0.0/13 dev bond0-ip6tnl1 proto 118
100.96.0.0/11 dev bond0-ip6tnl1 proto 118
fd00:96::/56 dev bond0-ip6tnl1 proto 118
 14.27 warning target down {'target': 1, 'old': 'suspect', 'reason': 'no answer for 0.36 s, 16 probes lost (lost after 0.025 s, down after 0.35 s)'}
 14.27 warning primary switched {'old': 1, 'new': 0, 'reason': 'primary down', 'device': 'bond0-ip6tnl0'}
 14.27 error   route sync failed; retrying {'problem': 'routes partially switched to bond0-ip6tnl0: fd00:96::/56: refused'}
 14.62 info    routes switched {'device': 'bond0-ip6tnl0', 'networks': ['fd00:96::/56']}
--- vpn-shoot 1 died at 14.0, the kernel refused one route until 14.6 @ 16.00
100.64.0.0/13 dev bond0-ip6tnl0 proto 118
100.96.0.0/11 dev bond0-ip6tnl0 proto 118
fd00:96::/56 dev bond0-ip6tnl0 proto 118"""

SHOWN_FIELDS = ("target", "old", "new", "reason", "device", "networks", "problem", "primary", "event")


def transcript(sim: Simulation, checkpoints: list[tuple[float, str]]) -> str:
    lines = [
        (t, f"{t:6.2f} {logging.getLevelName(log.level).lower():7} {log.message} "
            f"{ {k: v for k, v in log.fields.items() if k in SHOWN_FIELDS} }")
        for t, log in sim.result.logs if log.level >= logging.INFO
    ]
    lines += checkpoints
    return "\n".join(text for _, text in sorted(lines, key=lambda line: line[0]))


def test_golden_failure_sequence():
    paths = [Path(outages=((3.0, 6.0),)), Path(outages=((10.0, 10.7), (14.0, float("inf"))))]
    sim = Simulation(paths, seed=3, links=Simulation.bond_links())
    checkpoints = []

    def checkpoint(t: float, label: str) -> None:
        sim.at(t, lambda: checkpoints.append((t, f"--- {label} @ {t:.2f}\n{sim.kernel.render()}")))

    checkpoint(2.0, "started")
    checkpoint(5.0, "vpn-shoot 0 died at 3.0")
    sim.route_removed(8.0, ip_network("100.96.0.0/11"))
    checkpoint(8.5, "back at 6.0, no fail-back; a route deleted at 8.0 is restored")
    sim.bond_moves(10.0, Simulation.TAP1)
    checkpoint(13.0, "primary silent 10.0-10.7 during a bond failover: held")
    sim.at(14.0, lambda: sim.kernel.refuse.add(NETWORKS[2]))
    sim.at(14.6, lambda: sim.kernel.refuse.clear())
    checkpoint(16.0, "vpn-shoot 1 died at 14.0, the kernel refused one route until 14.6")
    sim.run(16.5)
    assert transcript(sim, checkpoints) == GOLDEN


def test_the_same_silence_without_a_bond_event_switches():
    """Control for the hold in the golden test."""
    sim = Simulation([Path(), Path(outages=((10.0, 10.7),))], seed=3, core_config=config(preference=(1, 0)),
                     links=Simulation.bond_links())
    sim.run(13.0)
    assert [(reason, new) for _, reason, new in sim.result.switches] == [("initial", 1), ("primary down", 0)]


def test_without_a_hold_a_bond_move_delays_a_switch_by_the_shared_margin():
    """The primary is silent 10.0-12.5 from a bond move on while the other answers: without a
    hold only the shared-silence margin (the bond moved in its silence) delays the switch."""
    sim = Simulation([Path(), Path(outages=((10.0, 12.5),))], seed=3,
                     core_config=config(preference=(1, 0), failover_hold=0.0), links=Simulation.bond_links())
    sim.bond_moves(10.0, Simulation.TAP1)
    sim.run(13.0)
    assert [new for _, _, new in sim.result.switches] == [1, 0]
    assert 10.0 + ProbeTiming().shared_silence_margin <= sim.result.switches[-1][0] < 12.0


def test_a_bond_move_in_the_primarys_silence_asks_for_the_shared_margin():
    """With server steering there is no hold: the primary silent 10.0-10.7 from this node's
    bond move on (the vpn-shoots' bonds move later, each on its own) is kept."""
    sim = Simulation([Path(), Path(outages=((10.0, 10.7),))], seed=3,
                     core_config=config(preference=(1, 0), failover_hold=0.0), links=Simulation.bond_links())
    sim.bond_moves(10.0, Simulation.TAP1)
    sim.run(13.0)
    assert [new for _, _, new in sim.result.switches] == [1]


def started_core(routes=None, preference=(0, 1)) -> tuple[PathCore, list]:
    core = PathCore(config(preference=preference), Probing(ProbeTiming(), 2, 0.0), 0.0)
    tunnels = {j: TUNNEL_INDEX + j for j in range(2)}
    effects = core.handle(Started(0.0, (), routes or {}, tunnels))
    return core, effects


def test_adopts_the_vpn_shoot_most_routes_point_to():
    routes = {NETWORKS[0]: Route(TUNNEL_INDEX + 1, 4), NETWORKS[1]: Route(TUNNEL_INDEX + 1, 4),
              NETWORKS[2]: Route(TUNNEL_INDEX, PROTOCOL)}
    core, effects = started_core(routes)
    assert core.primary == 1
    assert ReadRoutes(1) in effects  # check the adopted set is complete
    assert any(isinstance(e, Log) and e.message == "adopted existing routes" for e in effects)


def test_routes_through_other_devices_are_no_vote():
    core, effects = started_core({NETWORKS[0]: Route(7, 4)})
    assert core.primary is None
    assert not any(isinstance(e, ReadRoutes) for e in effects)


def consistent_core() -> PathCore:
    core, _ = started_core({n: Route(TUNNEL_INDEX, PROTOCOL) for n in NETWORKS})
    kernel = FakeKernel({n: Route(TUNNEL_INDEX, PROTOCOL) for n in NETWORKS})
    assert core.handle(kernel.read(ReadRoutes(0), 0.01)) == [] or core.routes_ok
    assert core.routes_ok
    return core


def test_our_own_route_echo_is_ignored_and_a_foreign_change_is_read():
    core = consistent_core()
    echo = RouteChanged(0.02, NETWORKS[0], TUNNEL_INDEX, PROTOCOL)
    assert not any(isinstance(e, ReadRoutes) for e in core.handle(echo))
    foreign = RouteChanged(0.03, NETWORKS[0], 9, 3)
    assert ReadRoutes(0) in core.handle(foreign)


def test_networks_we_do_not_route_are_none_of_our_business():
    core = consistent_core()
    other = RouteChanged(0.02, ip_network("192.0.2.0/24"), 9, 3, removed=True)
    assert not any(isinstance(e, ReadRoutes) for e in core.handle(other))


def test_a_tunnel_removed_makes_it_read_the_routes_again():
    core = consistent_core()
    gone = LinkChanged(0.02, LinkFacts(TUNNEL_INDEX, "bond0-ip6tnl0", None, None, None, False, ARPHRD_TUNNEL6), removed=True)
    assert ReadRoutes(0) in core.handle(gone)


def test_a_partial_write_is_unready_and_retried_with_doubling_backoff():
    core, _ = started_core({n: Route(TUNNEL_INDEX, PROTOCOL) for n in NETWORKS})
    effects = core.handle(RoutesRead(0.01, 0, TUNNEL_INDEX, {}))
    (write,) = [e for e in effects if isinstance(e, WriteRoutes)]
    assert write.replace == NETWORKS
    retries = []
    now = 0.02
    for _ in range(6):
        effects = core.handle(RoutesWritten(now, 0, TUNNEL_INDEX, ("fd00:96::/56: refused",)))
        assert not any(isinstance(e, ReadRoutes) for e in effects)
        assert not core.routes_ok
        assert core.route_problem == "routes partially switched to bond0-ip6tnl0: fd00:96::/56: refused"
        retry = core.next_wakeup()
        while ReadRoutes(0) not in core.handle(Tick(retry)):  # probe wake-ups come in between
            retry = core.next_wakeup()
        retries.append(round(retry - now, 3))
        core.handle(RoutesRead(retry, 0, TUNNEL_INDEX, {}))
        now = retry
    assert retries == [0.05, 0.1, 0.2, 0.4, 0.8, 1.0]


def test_nothing_healthy_at_start_does_not_spin():
    core, _ = started_core()
    for t in (0.5, 1.0, 5.0):
        core.handle(Tick(t))
        assert core.next_wakeup() > t
    assert core.primary is None
    assert core.ready() == (False, "no vpn-shoot chosen yet")


def test_probes_are_sent_on_the_shared_grid():
    core, effects = started_core()
    sends = [e.target for e in effects if isinstance(e, SendProbe)]
    assert sends == [0, 1]  # both targets wake together
    wake = core.next_wakeup()
    effects = core.handle(Answered(0.001, 0, 0.001)) + core.handle(Answered(0.001, 1, 0.001))
    assert not any(isinstance(e, SendProbe) for e in effects)
    assert core.next_wakeup() == pytest.approx(ProbeTiming().burst_interval)
    assert wake <= core.next_wakeup()


def test_vpn2_rounds_switch_after_ten_failed_pings():
    """vpn2's policy in the same core: a dead primary is left after about 10 s, by any good target."""
    sim = Simulation([Path(dead_from=5.0), Path()], seed=2, policy=lambda now: Vpn2Rounds(2, now),
                     core_config=config(failover_hold=0.0))
    sim.run(25.0)
    switches = sim.result.switches
    assert [(reason, new) for _, reason, new in switches] == [("initial", 0), ("primary down", 1)]
    assert 5.0 + 9.0 < switches[1][0] < 5.0 + 2.0 + 10.0 + 0.1
    assert sim.kernel.render().count("bond0-ip6tnl1") == len(NETWORKS)


def test_a_silent_target_whose_beacons_are_heard_is_not_called_down_for_a_while():
    """Server steering hears vpn-shoot 0 through another server: only the server between us
    failed, and the bonds are moving. Its down verdict waits, at most witness_max."""
    cfg = config(preference=(0, 1))
    cfg = CoreConfig(**{**cfg.__dict__, "witness_hold": 0.4, "witness_max": 3.0})
    sim = Simulation([Path(outages=((5.0, 20.0),)), Path()], seed=4, core_config=cfg)
    for k in range(int(5.0 / 0.2), int(20.0 / 0.2)):
        sim.at(k * 0.2, PeerAlive(k * 0.2, 0))  # its beacons keep coming
    sim.run(12.0)
    (down,) = sim.result.times_entering(Health.DOWN, target=0)
    assert 5.0 + 3.0 <= down <= 5.0 + 3.0 + 0.5
    assert [new for _, _, new in sim.result.switches] == [0, 1]


def test_without_beacons_the_silence_alone_decides():
    cfg = config(preference=(0, 1))
    cfg = CoreConfig(**{**cfg.__dict__, "witness_hold": 0.4, "witness_max": 3.0})
    sim = Simulation([Path(outages=((5.0, 20.0),)), Path()], seed=4, core_config=cfg)
    sim.run(12.0)
    (down,) = sim.result.times_entering(Health.DOWN, target=0)
    assert down < 5.0 + 0.5


def test_a_leaving_primary_is_left_and_the_notice_expires():
    sim = Simulation([Path(), Path()], seed=5, core_config=config(preference=(0, 1)))
    for k in range(10):
        sim.at(2.0 + 0.5 * k, Leaving(2.0 + 0.5 * k, 0))  # notices for 5 s, then the pod is gone
    sim.run(20.0)
    assert [(reason, new) for _, reason, new in sim.result.switches] == [("initial", 0), ("leaving", 1)]
    assert sim.core.leaving == {}  # expired: vpn-shoot 0 may be chosen again (no fail-back, though)


def serving(sim: Simulation, target: int, start: float, until: float) -> None:
    """vpn-shoot ``target``'s tunnel-controller tells us every second that it has our tunnel."""
    t = start
    while t < until:
        sim.at(t, Serving(t, target))
        t += 1.0


def test_a_replaced_vpn_shoot_takes_no_traffic_until_it_serves_us():
    """vpn-shoot 1's pod is replaced (down 10-20 s); from 20 s it answers probes but its
    tunnel-controller is not up yet. vpn-shoot 0 dies at 22 s: no switch to 1 (we keep the
    routes) until 1 serves again at 25 s."""
    paths = [Path(dead_from=22.0), Path(dead_from=10.0, alive_from=20.0)]
    sim = Simulation(paths, seed=3, core_config=config(preference=(0, 1)))
    serving(sim, 0, 1.0, 22.0)
    serving(sim, 1, 1.0, 10.0)
    serving(sim, 1, 25.0, 30.0)
    sim.run(24.9)
    assert sim.core.primary == 0 and sim.core.selector.stranded
    assert any(log.message.startswith("vpn-shoot does not serve us") for _, log in sim.result.logs)
    sim.run(30.0)
    assert [(reason, new) for _, reason, new in sim.result.switches] == [("initial", 0), ("primary down", 1)]
    assert 25.0 <= sim.result.switches[-1][0] < 25.1


def test_a_vpn_shoot_that_never_sent_notices_is_judged_by_its_probes():
    """vpn2's tunnel-controller sends no serving notices: nothing waits for them."""
    paths = [Path(dead_from=22.0), Path(dead_from=10.0, alive_from=20.0)]
    sim = Simulation(paths, seed=3, core_config=config(preference=(0, 1)))
    sim.run(30.0)
    assert [(reason, new) for _, reason, new in sim.result.switches] == [("initial", 0), ("primary down", 1)]
    assert sim.result.switches[-1][0] < 22.5


def test_a_vpn_shoot_back_without_serving_is_judged_by_its_probes_after_a_while():
    """vpn-shoot 1 comes back from down (10-20 s) and never serves again (rolled back to
    vpn2's tunnel-controller): serving_forget after it came back it may take traffic."""
    paths = [Path(dead_from=30.0), Path(dead_from=10.0, alive_from=20.0)]
    core_config = config(preference=(0, 1))
    sim = Simulation(paths, seed=3, core_config=core_config)
    serving(sim, 0, 1.0, 30.0)
    serving(sim, 1, 1.0, 10.0)
    sim.run(70.0)
    assert [(reason, new) for _, reason, new in sim.result.switches] == [("initial", 0), ("primary down", 1)]
    assert 20.0 + core_config.serving_forget <= sim.result.switches[-1][0] < 20.5 + core_config.serving_forget


def test_a_vpn_shoot_that_keeps_serving_is_not_held_back_by_a_slow_notice():
    """Notices 4 s apart (a busy tunnel-controller) hold nothing back while the vpn-shoot
    stayed up: only coming back from down asks for a fresh notice."""
    paths = [Path(dead_from=12.5), Path()]
    sim = Simulation(paths, seed=3, core_config=config(preference=(0, 1)))
    serving(sim, 0, 1.0, 12.0)
    sim.at(1.0, Serving(1.0, 1))
    sim.at(5.0, Serving(5.0, 1))
    sim.run(14.0)
    assert [(reason, new) for _, reason, new in sim.result.switches] == [("initial", 0), ("primary down", 1)]
    assert sim.result.switches[-1][0] < 13.0


def test_steering_telling_of_a_bond_move_asks_for_the_shared_margin():
    """The same silence as in the control above, with server steering's word that the bond
    changed server (its move need not show on the bond's link messages): kept."""
    sim = Simulation([Path(), Path(outages=((10.0, 10.7),))], seed=3,
                     core_config=config(preference=(1, 0), failover_hold=0.0))
    sim.at(10.1, BondMoved(10.1))
    sim.run(13.0)
    assert [new for _, _, new in sim.result.switches] == [1]
