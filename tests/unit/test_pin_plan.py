"""Connection pinning's decisions, driven through the real core (``pathsim``).

Where new connections go, when a gone vpn-shoot's connections are closed, and
what never happens (the vpn-shoot new connections go to is never refused; a
short stall closes nothing).
"""

from path_controller.core import Leaving
from path_controller.pin_plan import PinChoice, PinPlan
from tests.unit.pathsim import FakeKernel, Path, Simulation, config


def sim(paths, mode="primary", close_after=1.5, kernel=None) -> Simulation:
    return Simulation(paths, core_config=config(len(paths), pin_mode=mode, pin_close_after=close_after), kernel=kernel)


def test_new_connections_follow_the_primary_and_a_dead_vpn_shoot_is_closed_after_close_after():
    s = sim([Path(dead_from=3.0, alive_from=8.0), Path()])
    s.run(2.0)
    assert s.kernel.pinning == PinChoice((0,))
    s.run(7.0)
    assert s.kernel.pinning == PinChoice((1,), frozenset({0}))
    [(closed_at, j)] = s.kernel.closed
    down_at = s.result.times_entering_any("down")[0]
    assert j == 0 and 1.5 <= closed_at - down_at <= 1.6
    assert s.core.ready() == (True, "ok: shoot networks via bond0-ip6tnl1")
    s.run(10.0)  # back: allowed again, new connections stay on 1 (no fail-back)
    assert s.kernel.pinning == PinChoice((1,))
    assert len(s.kernel.closed) == 1


def test_a_stall_shorter_than_close_after_switches_new_connections_but_closes_nothing():
    s = sim([Path(outages=((3.0, 4.0),)), Path()])
    s.run(8.0)
    assert [reason for _, reason, _ in s.result.switches] == ["initial", "primary down"]
    assert s.kernel.pinning == PinChoice((1,))
    assert s.kernel.closed == []


def test_the_vpn_shoot_new_connections_go_to_is_never_refused_even_when_all_are_down():
    s = sim([Path(dead_from=3.0), Path(dead_from=3.0)])
    s.run(10.0)
    choice = s.kernel.pinning
    assert len(choice.new_to) == 1 and choice.new_to[0] not in choice.refused
    assert choice.refused == {1 - choice.new_to[0]}


def test_spread_uses_every_healthy_vpn_shoot_that_is_not_leaving():
    s = sim([Path(dead_from=6.0), Path(), Path()], mode="spread")
    s.run(2.0)
    assert s.kernel.pinning == PinChoice((0, 1, 2))
    s.at(3.0, Leaving(3.0, 2))
    s.run(4.0)
    assert s.kernel.pinning == PinChoice((0, 1))
    s.run(10.0)  # 0 died; 2's notice expired (it stayed)
    assert s.kernel.pinning == PinChoice((1, 2), frozenset({0}))


def test_a_leaving_primary_gets_no_new_connections_and_keeps_its_old_ones():
    s = sim([Path(), Path()])
    s.run(2.0)
    s.at(2.5, Leaving(2.5, 0))
    s.run(3.0)
    assert s.kernel.pinning == PinChoice((1,))
    assert s.kernel.closed == []


def test_a_refused_change_is_retried_and_not_ready_until_it_holds():
    kernel = FakeKernel()
    kernel.pinning_fails = True
    s = sim([Path(), Path()], kernel=kernel)
    s.run(2.0)
    ready, reason = s.core.ready()
    assert not ready and reason == "connection pinning not applied: Operation not permitted"
    kernel.pinning_fails = False
    s.run(4.0)
    assert s.kernel.pinning == PinChoice((0,))
    assert s.core.ready()[0]


def test_a_predecessors_pinning_is_adopted_and_not_rewritten():
    kernel = FakeKernel()
    kernel.pinning = PinChoice((1,))
    s = Simulation([Path(), Path()], core_config=config(2, preference=(1, 0), pin_mode="primary"), kernel=kernel)
    writes = []
    original = kernel.pin
    kernel.pin = lambda work, now: writes.append(work) or original(work, now)
    s.run(5.0)
    assert writes == [] and kernel.pinning == PinChoice((1,))


def test_off_decides_nothing():
    plan = PinPlan("off", 1.5)
    assert plan.wanted(0, [0, 1], frozenset(), 0.0) is None
    s = sim([Path(dead_from=1.0), Path()], mode="off")
    s.run(6.0)
    assert s.kernel.pinning is None
