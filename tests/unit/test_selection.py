"""Path selection with an injected clock: sticky, spread, start-up, none healthy, no flap."""

from collections import Counter
from dataclasses import dataclass

from path_controller.probe import Health
from path_controller.selection import PathSelector, preference_order

U, D, S, R, N = Health.UP, Health.DOWN, Health.SUSPECT, Health.RISING, Health.UNKNOWN


@dataclass
class View:
    """A target as selection sees it. ``answering``: it answers probes while a
    silent primary does not (by default every healthy target does)."""

    state: Health
    answering: bool | None = None

    def outlasted_by(self, other: "View", now: float) -> bool:
        return other.state.healthy if other.answering is None else other.answering


def states(*values):
    return {j: value if isinstance(value, View) else View(value) for j, value in enumerate(values)}


def test_preference_is_a_rotation_and_deterministic():
    order = preference_order("10.96.3.17", 2)
    assert sorted(order) == [0, 1]
    assert order == preference_order("10.96.3.17", 2)
    assert preference_order("x", 3) in ([0, 1, 2], [1, 2, 0], [2, 0, 1])


def test_spread_over_many_apiservers():
    firsts = Counter(preference_order(f"10.96.{i // 250}.{i % 250}", 2)[0] for i in range(1000))
    assert 400 < firsts[0] < 600


def test_first_choice_is_the_preferred_healthy_target():
    selector = PathSelector([1, 0], now=0.0, startup_grace=0.7)
    switch = selector.decide(states(U, U), 0.1)
    assert (switch.old, switch.new, switch.reason) == (None, 1, "initial")


def test_first_choice_waits_for_the_preferred_verdict():
    selector = PathSelector([1, 0], now=0.0, startup_grace=0.7)
    assert selector.decide(states(U, N), 0.1) is None  # target 1 undecided yet
    assert selector.decide(states(U, D), 0.4).new == 0  # preferred is down: take the next


def test_first_choice_after_grace_takes_what_is_healthy():
    selector = PathSelector([1, 0], now=0.0, startup_grace=0.7)
    assert selector.decide(states(U, N), 0.5) is None
    assert selector.decide(states(U, N), 0.8).new == 0


def test_no_choice_while_nothing_is_healthy():
    selector = PathSelector([0, 1], now=0.0, startup_grace=0.7)
    assert selector.decide(states(D, D), 5.0) is None
    assert selector.primary is None
    assert selector.decide(states(D, U), 6.0).new == 1


def test_sticky_no_failback():
    selector = PathSelector([0, 1], now=0.0, startup_grace=0.7)
    selector.decide(states(U, U), 0.1)
    assert selector.decide(states(D, U), 1.0).new == 1
    # The old primary comes back: traffic stays where it is.
    for t in range(2, 50):
        assert selector.decide(states(U, U), float(t)) is None
    assert selector.primary == 1


def test_switch_only_when_primary_is_down_not_suspect_or_rising():
    selector = PathSelector([0, 1], now=0.0, startup_grace=0.7, adopted=0)
    assert selector.decide(states(S, U), 1.0) is None
    assert selector.decide(states(N, U), 1.0) is None
    assert selector.decide(states(R, U), 1.0) is None
    switch = selector.decide(states(D, U), 1.0)
    assert (switch.old, switch.new, switch.reason) == (0, 1, "primary down")


def test_suspect_target_is_a_valid_destination():
    selector = PathSelector([0, 1], now=0.0, startup_grace=0.7, adopted=0)
    assert selector.decide(states(D, S), 1.0).new == 1


def test_none_healthy_keeps_the_last_primary_and_says_so():
    selector = PathSelector([0, 1], now=0.0, startup_grace=0.7, adopted=0)
    assert selector.decide(states(D, D), 1.0) is None
    assert selector.primary == 0 and selector.stranded
    assert selector.decide(states(D, R), 2.0) is None
    assert selector.decide(states(D, U), 3.0).new == 1
    assert not selector.stranded


def test_adopted_primary_is_kept_when_healthy():
    selector = PathSelector([1, 0], now=0.0, startup_grace=0.7, adopted=0)
    assert selector.decide(states(U, U), 0.1) is None
    assert selector.primary == 0


def test_no_flap_under_alternating_verdicts():
    """Targets alternating suspect/up (lossy) never move the primary."""
    selector = PathSelector([0, 1], now=0.0, startup_grace=0.7, adopted=0)
    switches = 0
    for t in range(1000):
        a = S if t % 2 else U
        b = U if t % 2 else S
        switches += selector.decide(states(a, b), t * 0.01) is not None
    assert switches == 0


def test_three_targets_next_healthy_in_preference_order():
    selector = PathSelector([2, 0, 1], now=0.0, startup_grace=0.7, adopted=2)
    assert selector.decide(states(D, U, D), 1.0).new == 1
    selector = PathSelector([2, 0, 1], now=0.0, startup_grace=0.7, adopted=2)
    assert selector.decide(states(U, U, D), 1.0).new == 0


def test_no_switch_when_every_target_fell_silent_together():
    """This node stalled or a server failed over: the other path is no better."""
    selector = PathSelector([0, 1], now=0.0, startup_grace=0.7, adopted=0)
    assert selector.decide(states(D, View(S, answering=False)), 5.45) is None
    assert selector.decide(states(D, View(U, answering=False)), 5.5) is None  # its late answers came in first
    assert selector.primary == 0 and not selector.stranded  # waiting, not stranded
    # It answers while the primary stays silent: the primary's path is dead.
    assert selector.decide(states(D, View(U, answering=True)), 5.53).new == 1


def test_evidence_picks_among_healthy_targets_in_order():
    selector = PathSelector([2, 0, 1], now=0.0, startup_grace=0.7, adopted=2)
    assert selector.decide(states(View(U, answering=False), U, D), 5.45).new == 1


def test_no_switch_while_the_bond_fails_over_even_from_a_down_primary():
    """A black hole left every target down; the bond's failover brings them back one
    by one. The first one back is no better: wait for the hold to end."""
    selector = PathSelector([0, 1], now=0.0, startup_grace=0.7, adopted=0)
    assert selector.decide(states(D, D), 5.0) is None and selector.stranded
    selector.hold(10.0 + 1.5)  # the bond moved at 10.0
    assert selector.decide(states(D, U), 10.7) is None  # the other came back first
    assert selector.stranded is False  # it has a place to go, it is waiting
    assert selector.decide(states(U, U), 10.9) is None  # and the primary came back too
    assert selector.primary == 0


def test_a_primary_still_down_when_the_hold_ends_is_left():
    selector = PathSelector([0, 1], now=0.0, startup_grace=0.7, adopted=0)
    selector.hold(11.5)
    selector.hold(11.0)  # holds only extend
    assert selector.decide(states(D, U), 11.4) is None
    assert selector.decide(states(D, U), 11.5).new == 1


def test_a_leaving_primary_is_left_for_a_healthy_one_that_stays():
    selector = PathSelector([0, 1], now=0.0, startup_grace=0.7, adopted=0)
    switch = selector.decide(states(U, U), 1.0, leaving=frozenset({0}))
    assert (switch.old, switch.new, switch.reason) == (0, 1, "leaving")


def test_a_leaving_primary_stays_when_nothing_else_is_healthy():
    selector = PathSelector([0, 1], now=0.0, startup_grace=0.7, adopted=0)
    assert selector.decide(states(U, D), 1.0, leaving=frozenset({0})) is None


def test_the_first_choice_avoids_a_leaving_target():
    selector = PathSelector([0, 1], now=0.0, startup_grace=0.7)
    assert selector.decide(states(U, U), 0.1, leaving=frozenset({0})).new == 1
