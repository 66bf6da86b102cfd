"""The probe state machine with an injected clock: hysteresis, bursts, dead
detection, no false verdicts under loss, stalls forgiven."""

import pytest

from path_controller.probe import TRANSITIONS, Health, ProbeTiming, TargetHealth
from tests.unit.pathsim import Path, simulate

DEFAULT = ProbeTiming()
REMEMBERING = ProbeTiming(stall_memory=300.0)  # stall memory is opt-in


def test_transition_table_is_closed_and_has_no_self_loops():
    for state, targets in TRANSITIONS.items():
        assert state not in targets
        assert targets <= set(Health)


def test_starts_unknown_and_rises_after_rise_answers():
    health = TargetHealth(DEFAULT, 0.0)
    assert health.state is Health.UNKNOWN
    assert health.next_interval == DEFAULT.burst_interval  # quick first verdict
    for i in range(DEFAULT.rise - 1):
        health.sent(i * 0.02)
        assert health.answered(0.001, i * 0.02 + 0.001) is None
    health.sent(0.1)
    transition = health.answered(0.001, 0.101)
    assert (transition.old, transition.new) == (Health.UNKNOWN, Health.UP)
    assert health.next_interval == DEFAULT.interval


def up(timing=DEFAULT) -> TargetHealth:
    health = TargetHealth(timing, 0.0)
    for i in range(timing.rise):
        health.sent(i * 0.01)
        health.answered(0.001, i * 0.01 + 0.001)
    assert health.state is Health.UP
    return health


def test_one_late_reply_makes_suspect_and_bursts_then_recovers():
    health = up()
    assert health.tick(0.95) is None  # the loop ticks at least every interval
    health.sent(1.0)
    transition = health.tick(1.0 + DEFAULT.late_after + 0.001)
    assert transition.new is Health.SUSPECT
    assert health.next_interval == DEFAULT.burst_interval
    transition = health.answered(0.05, 1.05)
    assert (transition.old, transition.new) == (Health.SUSPECT, Health.UP)


def test_silence_alone_is_not_enough_without_lost_probes():
    health = up()
    # Nothing was sent (e.g. the loop did not run): no evidence against the target.
    assert health.tick(0.2) is None
    assert health.tick(0.25) is None
    assert health.state is Health.UP


def test_down_needs_both_silence_and_enough_lost_probes():
    health = up()
    t = 0.03
    for i in range(DEFAULT.min_lost - 1):
        health.sent(t)
        t += 0.02
        health.tick(t)
    # Long silence but only min_lost-1 probes lost.
    t = 0.03 + DEFAULT.dead_interval + 0.001
    health.tick(t)
    assert health.state is Health.SUSPECT
    health.sent(t)
    transition = health.tick(t + DEFAULT.late_after + 0.001)
    assert transition is not None and transition.new is Health.DOWN


def test_down_then_rising_then_up_and_a_loss_while_rising_resets():
    health = up()
    t = 0.1
    while health.state is not Health.DOWN:
        health.sent(t)
        t += 0.02
        health.tick(t)
    health.sent(t)
    assert health.answered(0.001, t + 0.001).new is Health.RISING
    health.sent(t + 0.1)
    assert health.tick(t + 0.1 + DEFAULT.late_after + 0.01).new is Health.DOWN
    for i in range(DEFAULT.rise):
        health.sent(t + 1 + i * 0.1)
        transition = health.answered(0.001, t + 1 + i * 0.1 + 0.001)
    assert transition.new is Health.UP


def test_dead_target_goes_down_about_dead_interval_after_its_last_answer():
    for seed in range(20):
        death = 5.0 + seed * 0.013
        result, _ = simulate(DEFAULT, Path(dead_from=death), duration=8.0, seed=seed)
        downs = result.times_entering(Health.DOWN)
        assert len(downs) == 1
        assert death < downs[0] <= death + DEFAULT.dead_interval + DEFAULT.burst_interval + 0.01


@pytest.mark.parametrize("seed", range(3))
def test_no_false_down_in_ten_minutes_at_20_percent_loss_each_way(seed):
    result, _ = simulate(DEFAULT, Path(loss_each_way=0.2, rtt=0.002, jitter=0.003), duration=600, seed=seed)
    assert result.times_entering(Health.DOWN) == []
    # Probe cost stays within budget: at most 50 probes/s on average even under loss.
    assert result.sent[0] / 600 <= 50


def test_probe_rate_when_healthy_is_the_slow_interval():
    result, _ = simulate(DEFAULT, Path(rtt=0.002), duration=60)
    assert result.sent[0] / 60 == pytest.approx(1 / DEFAULT.interval, rel=0.05)


def test_slow_path_is_judged_on_its_own_round_trip():
    # 150 ms RTT: probes count as lost once late_after old (~2 RTT, capped): answers keep coming,
    # so the silence rule never calls it down.
    result, health = simulate(DEFAULT, Path(rtt=0.15, jitter=0.05, dead_from=10.0), duration=12.0)
    downs = result.times_entering(Health.DOWN)
    assert health.late_after == DEFAULT.late_after_max
    assert len(downs) == 1 and downs[0] - 10.0 > DEFAULT.dead_interval
    quiet, _ = simulate(DEFAULT, Path(rtt=0.15, jitter=0.05), duration=120.0)
    assert quiet.times_entering(Health.DOWN) == []


def test_a_stalled_loop_is_not_silence():
    result, _ = simulate(DEFAULT, Path(rtt=0.002), duration=5.0, stall=(2.0, 1.5))
    assert result.times_entering(Health.DOWN) == []


def test_recovery_after_death():
    result, health = simulate(DEFAULT, Path(dead_from=2.0, alive_from=4.0), duration=6.0)
    states = [tr.new for _, _, tr in result.transitions]
    assert Health.DOWN in states and states[-1] is Health.UP
    assert health.state is Health.UP


def stall(health: TargetHealth, at: float, length: float) -> None:
    """An answer ``length`` late at ``at``, while the other vpn-shoot answered promptly (the path's stall)."""
    health.sent(at - length)
    health.answered(length, at, [witness(at - length / 4)])


def witness(sent_at: float) -> TargetHealth:
    """Another target, up since 0, that answered a probe sent at ``sent_at`` in 1 ms."""
    other = up()
    other.sent(sent_at)
    other.answered(0.001, sent_at + 0.001)
    return other


S = DEFAULT.stall_settle + 1  # a target that came up at 0 has settled by then


def test_one_stall_does_not_stretch_the_dead_interval():
    """A server failover delays a few answers once: the next failover stays fast."""
    health = up(REMEMBERING)
    stall(health, S + 2.0, 0.8)
    assert health.dead_after(S + 3.0) == DEFAULT.dead_interval


def test_a_path_that_keeps_stalling_gets_a_longer_dead_interval_for_a_while():
    health = up(REMEMBERING)
    stall(health, S + 2.0, 0.6)
    stall(health, S + 5.0, 1.5)
    assert health.dead_after(S + 5.5) == DEFAULT.dead_interval  # two events: not yet
    stall(health, S + 9.0, 0.7)
    assert health.dead_after(S + 9.5) == pytest.approx(DEFAULT.stall_factor * 1.5)
    for i in range(100):  # the path is fine again
        health.sent(S + 10 + i * 0.1)
        health.answered(0.001, S + 10 + i * 0.1 + 0.001)
    assert health.dead_after(S + 60.0) == pytest.approx(DEFAULT.stall_factor * 1.5)
    assert health.dead_after(S + 9.0 + REMEMBERING.stall_memory + 1) == DEFAULT.dead_interval


def test_jitter_below_the_stall_threshold_is_not_remembered():
    """Answers a few hundred ms late on a busy node: the next failover stays fast."""
    health = up(REMEMBERING)
    for k in range(10):
        stall(health, S + 2.0 + 2 * k, 0.9 * DEFAULT.stall_min)
    assert not health.stalls
    assert health.dead_after(S + 25.0) == DEFAULT.dead_interval


def test_a_target_that_just_came_up_is_settling():
    """Right after coming up (OpenVPN clients connecting, the bond reselecting) hiccups are not the path's."""
    health = up(REMEMBERING)
    for at in (2.0, 4.0, 6.0):
        stall(health, at, 1.0)
    assert not health.stalls
    assert health.dead_after(7.0) == DEFAULT.dead_interval


def test_answers_less_than_a_second_apart_are_one_stall():
    health = up(REMEMBERING)
    for k in range(10):  # a burst of late answers after one stall
        stall(health, S + 2.0 + k * 0.02, 0.8 - k * 0.02)
    assert len(health.stalls) == 1
    assert health.dead_after(S + 2.5) == DEFAULT.dead_interval


def test_a_stalling_path_is_not_called_down_by_the_next_longer_stall():
    health = up(REMEMBERING)
    for at in (S + 2.0, S + 4.0, S + 6.0):
        stall(health, at, 0.6)
    t = S + 6.0
    while t < S + 8.0:  # 2 s of silence after the last answer, probes unanswered (< 4 x 0.6 s)
        health.sent(t)
        t += DEFAULT.burst_interval
        health.tick(t)
    assert health.state is not Health.DOWN
    while t < S + 8.5:  # but not for ever
        health.sent(t)
        t += DEFAULT.burst_interval
        health.tick(t)
    assert health.state is Health.DOWN


def silent_until_down(health: TargetHealth, t: float) -> float:
    """Probe a target that does not answer until it is down; returns the time."""
    while health.state is not Health.DOWN:
        health.sent(t)
        t += DEFAULT.burst_interval
        health.tick(t)
    return t


def test_late_answers_from_a_target_coming_back_are_not_stalls():
    """A restarted vpn-shoot answers the probes queued while it was down all at once,
    seconds late: that is a restart, and must not slow down the next failover."""
    health = up(REMEMBERING)
    t = silent_until_down(health, S)
    for k in range(3):  # three late answers, seconds apart, to probes sent while down
        t += 1.5
        health.sent(t - 1.2)
        health.answered(1.2, t)
        if health.state is not Health.UP:
            health.tick(t + DEFAULT.interval)
    assert not health.stalls
    assert health.dead_after(t) == DEFAULT.dead_interval


def test_a_stall_longer_than_the_dead_interval_still_counts():
    """A probe sent while the path was up and answered after it was called down is a stall."""
    health = up(REMEMBERING)
    health.sent(S)
    t = silent_until_down(health, S + DEFAULT.burst_interval)
    health.answered(t + 0.5 - S, t + 0.5, [witness(t + 0.4)])
    assert len(health.stalls) == 1 and health.stalls[0][1] == pytest.approx(t + 0.5 - S)


def answering(health: TargetHealth, start: float, end: float, rtt: float = 0.001) -> None:
    """The target answers every probe on time from ``start`` to ``end``."""
    t = start
    while t < end:
        health.sent(t)
        health.answered(rtt, t + rtt)
        t += DEFAULT.interval


def test_stalls_every_live_target_saw_are_local_and_not_remembered():
    """A saturated node (or a server failover) delays every target's answers at once:
    the paths are fine, and the next failover must stay fast."""
    a, b = up(REMEMBERING), up(REMEMBERING)
    for at in (S + 2.0, S + 5.0, S + 9.0):
        answering(a, at - 2.0, at - 1.5)
        answering(b, at - 2.0, at - 1.5)
        stall_with_others(a, at, 1.2, [b])
        stall_with_others(b, at, 1.2, [a])
    assert health_stalls(a, b) == (0, 0)
    assert a.dead_after(S + 9.5) == b.dead_after(S + 9.5) == DEFAULT.dead_interval


def health_stalls(*healths: TargetHealth) -> tuple[int, ...]:
    return tuple(len(h.stalls) for h in healths)


def stall_with_others(health: TargetHealth, at: float, length: float, others: list[TargetHealth]) -> None:
    health.sent(at - length)
    health.answered(length, at, others)


def test_a_stall_only_this_path_had_is_remembered():
    """The other vpn-shoot answered on time throughout: the stalls were this path's."""
    a, b = up(REMEMBERING), up(REMEMBERING)
    for at in (S + 2.0, S + 5.0, S + 9.0):
        answering(b, at - 1.0, at)
        stall_with_others(a, at, 0.8, [b])
    assert len(a.stalls) == 3
    assert a.dead_after(S + 9.5) == pytest.approx(DEFAULT.stall_factor * 0.8)


def test_a_shared_stall_is_judged_local_whichever_answer_comes_first():
    a, b = up(REMEMBERING), up(REMEMBERING)
    answering(a, S, S + 1.0)
    answering(b, S, S + 1.0)
    stall_with_others(b, S + 2.0, 0.9, [a])  # b first: a has been silent too
    stall_with_others(a, S + 2.0, 0.9, [b])  # then a: b's answer was as late
    assert health_stalls(a, b) == (0, 0)


def test_a_target_dead_before_the_stall_is_no_witness():
    """With the other vpn-shoot down (or restarting, which loads the node) there is
    nothing to compare: the stall is not remembered."""
    a, b = up(REMEMBERING), up(REMEMBERING)
    silent_until_down(b, S)
    stall_with_others(a, S + 2.0, 0.8, [b])
    assert not a.stalls
    stall_with_others(a, S + 4.0, 0.8, [])  # a single vpn-shoot: likewise
    assert not a.stalls


def test_a_target_that_went_down_during_the_stall_is_a_witness():
    """A local stall longer than the dead interval: the other target was called down in it."""
    a, b = up(REMEMBERING), up(REMEMBERING)
    answering(a, S, S + 1.0)
    answering(b, S, S + 1.0)
    silent_until_down(b, S + 1.0)
    stall_with_others(a, S + 2.0, 1.0, [b])
    assert not a.stalls


def probe_both(primary: TargetHealth, other: TargetHealth, at: float) -> None:
    primary.sent(at)
    other.sent(at)


def test_a_target_answering_while_the_primary_is_silent_outlasts_it():
    """The primary's vpn-shoot died: the other answers its probes in milliseconds."""
    primary, other = up(REMEMBERING), up(REMEMBERING)
    t = S
    while t < S + 0.4:
        probe_both(primary, other, t)
        other.answered(0.005, t + 0.005)
        t += DEFAULT.interval
    assert primary.outlasted_by(other, t) and not other.outlasted_by(primary, t)


def test_a_shared_stall_is_not_outlasting():
    """Both answer a 1 s stall late; the other's late answer happens to come first."""
    primary, other = up(REMEMBERING), up(REMEMBERING)
    t = S
    while t < S + 1.0:
        probe_both(primary, other, t)
        t += DEFAULT.burst_interval
    other.answered(1.0, S + 1.0)  # answers the first probe of the stall, 1 s late
    assert not primary.outlasted_by(other, S + 1.0005)


def test_after_a_shared_blackout_the_first_fresh_answer_is_not_yet_evidence():
    """Nothing got through for a second; then the other's fresh probe is answered a few
    ms before the primary's, sent at the same moment: no evidence, unless the
    primary's stays unanswered past its own deadline."""
    primary, other = up(REMEMBERING), up(REMEMBERING)
    for k in range(60):
        probe_both(primary, other, S + k * DEFAULT.burst_interval)
    back = S + 1.0
    probe_both(primary, other, back)
    other.answered(0.004, back + 0.004)
    assert not primary.outlasted_by(other, back + 0.005)
    margin = DEFAULT.shared_silence_margin  # the other was silent for a second too
    assert not primary.outlasted_by(other, back + 0.004 + margin - 0.01)
    assert primary.outlasted_by(other, back + 0.004 + margin + 0.001)


def test_paths_back_up_to_the_shared_margin_apart_after_a_server_event_are_not_outlasting():
    """A server black-holed: both vpn-shoots silent for 0.7 s; the other's bond moved
    0.6 s before the primary's (each vpn-shoot's steering moves on its own)."""
    primary, other = up(REMEMBERING), up(REMEMBERING)
    t = S
    while t < S + 0.7:
        probe_both(primary, other, t)
        t += DEFAULT.burst_interval
    primary_back = S + 1.3
    while t < primary_back:
        probe_both(primary, other, t)
        other.answered(0.003, t + 0.003)
        assert not primary.outlasted_by(other, t + 0.004)
        t += DEFAULT.burst_interval


def test_the_other_called_down_in_the_shared_silence_counts_even_when_time_was_forgiven():
    """The daemon stalled during a black hole: the time it did not run is forgiven from both
    silences, so the other's looks short when it answers; it was down, though (seen in the
    sandbox: the primary was left 0.3 s before it answered again)."""
    primary, other = up(REMEMBERING), up(REMEMBERING)
    t = S
    while other.state is not Health.DOWN:
        probe_both(primary, other, t)
        t += DEFAULT.burst_interval
        other.tick(t)
        primary.tick(t)
    other.silent_since = t - 0.1  # what forgiving a stall of the daemon does to it
    probe_both(primary, other, t)
    other.answered(0.003, t + 0.003)
    probe_both(primary, other, t + DEFAULT.interval)
    other.answered(0.003, t + DEFAULT.interval + 0.003)
    assert not primary.outlasted_by(other, t + DEFAULT.interval + 0.5)


def test_the_other_answering_a_little_late_does_not_slow_down_a_death():
    """A busy node: the other's answers come 0.2 s late (less than a dead interval) just
    as the primary dies. That is no shared silence: the short margin applies."""
    primary, other = up(REMEMBERING), up(REMEMBERING)
    probe_both(primary, other, S)
    other.answered(0.2, S + 0.2)
    t = S + DEFAULT.interval * 3
    while t < S + 0.6:
        probe_both(primary, other, t)
        other.answered(0.004, t + 0.004)
        t += DEFAULT.interval
    margin = max(DEFAULT.late_after, DEFAULT.dead_interval / 2)
    assert margin < DEFAULT.shared_silence_margin
    assert primary.outlasted_by(other, S + 0.3 + margin + 0.01)


def test_paths_back_a_little_apart_after_a_shared_silence_are_not_outlasting():
    """Every path was silent (this node, a server); the other vpn-shoot's path came
    back 150 ms before the primary's. Switching would break every open connection
    for nothing. (Bond failovers set them further apart: the controller holds
    verdicts for those, see bondwatch.)"""
    primary, other = up(REMEMBERING), up(REMEMBERING)
    t = S
    while t < S + 1.0:  # both silent
        probe_both(primary, other, t)
        t += DEFAULT.burst_interval
    other_back, primary_back = S + 1.0, S + 1.15
    while t < primary_back:
        probe_both(primary, other, t)
        if t >= other_back:
            other.answered(0.003, t + 0.003)
        assert not primary.outlasted_by(other, t + 0.004)
        t += DEFAULT.burst_interval


def test_answers_queued_while_down_do_not_inflate_the_round_trip():
    """A vpn-shoot coming back answers, all at once and in order, every probe queued while
    it was down, up to seconds late; the next failover must still be detected fast."""
    health = up(REMEMBERING)
    t = silent_until_down(health, S)
    queued = [t + k * DEFAULT.interval for k in range(130)]  # 13 s down
    for sent_at in queued:
        health.sent(sent_at)
    back = queued[-1] + 0.05
    for k, sent_at in enumerate(queued):  # the burst of answers, oldest first
        health.answered(back + k * 0.0005 - sent_at, back + k * 0.0005)
    assert health.state is Health.UP
    assert health.late_after == DEFAULT.late_after
    answering(health, back + 1.0, back + 3.0)
    died = back + 3.0
    assert silent_until_down(health, died) - died < 1.0


def test_a_dead_target_is_called_down_even_on_a_slow_path():
    """On a path whose answers kept coming seconds late the lost-probe deadline grew; it is
    capped, and the probes kept span it, so a dead target is still called down."""
    health = up(REMEMBERING)
    answering(health, S, S + 10.0, rtt=1.5)  # slower_after passed: the estimate follows
    assert health.late_after == DEFAULT.late_after_max
    died = health.last_answer
    took = silent_until_down(health, died) - died
    assert DEFAULT.dead_interval <= took < DEFAULT.late_after_max + 20 * DEFAULT.burst_interval


def test_stall_memory_is_off_by_default():
    health = up()
    for at in (S + 2.0, S + 5.0, S + 9.0):
        stall(health, at, 1.5)
    assert len(health.stalls) == 3
    assert health.dead_after(S + 9.5) == DEFAULT.dead_interval


def _silent_until_down(health: TargetHealth, t: float, step: float = 0.015) -> float:
    """Probe a silent target until it is called down; the time it was."""
    while health.state is not Health.DOWN:
        health.sent(t)
        t += step
        health.tick(t)
        assert t < 30, "never called down"
    return t


def test_a_hold_delays_the_down_verdict_until_it_ends():
    health = up()
    health.hold(2.0)  # this node's bond failed over at 0.5 with a 1.5 s hold
    down_at = _silent_until_down(health, 0.5)
    assert 2.0 <= down_at <= 2.0 + DEFAULT.burst_interval + 0.001


def test_a_hold_ends_and_a_target_answering_meanwhile_is_never_down():
    health = up()
    health.hold(1.5)
    t = 0.5
    while t < 1.2:  # silent for 0.7 s, twice the dead interval
        health.sent(t)
        t += 0.015
        health.tick(t)
    assert health.state is Health.SUSPECT
    health.sent(t)
    assert health.answered(0.001, t + 0.001).new is Health.UP


def test_holds_only_extend():
    health = up()
    health.hold(2.0)
    health.hold(1.0)
    assert _silent_until_down(health, 0.5) >= 2.0
