"""Server steering: the beacon codec and the decision core, in a simulated fleet
(tests/unit/fleetsim.py: the real core per pod, a kernel bond model, two servers).

Every case of issue 14 with vpn2's client timing (reconnects 1-6 s apart) and
3 kube-apiservers; vpn2 (no steering, its bonds) beside ours as the baseline."""

import pytest

from bonding.plan import AddressPlan
from steering.beacon import Beacon, BadBeacon, decode, encode
from steering.core import BeaconHeard, BondSeen, SendBeacon, ServerSteering, SetPrimary, SteeringConfig, Tick
from tests.unit.fleetsim import Fleet

PLAN = AddressPlan.from_text()
EVERYONE = ("api0", "api1", "api2", "shoot0", "shoot1")
MAC = bytes.fromhex("02aabbccddee")


def test_beacon_round_trip_plain_and_authenticated():
    beacon = Beacon(PLAN.seed_client(7), 1, 0, frozenset({0, 1}), frozenset({PLAN.shoot_client(0), PLAN.shoot_client(1)}), 42)
    assert decode(encode(beacon, MAC), PLAN.network) == beacon
    frame = encode(beacon, MAC, key=b"k" * 32, now_ms=1234)
    assert decode(frame, PLAN.network, key=b"k" * 32) == Beacon(**{**beacon.__dict__, "timestamp_ms": 1234})
    assert frame[6:12] == MAC and frame[:6] == b"\xff" * 6


@pytest.mark.parametrize(("frame", "key", "reason"), [
    (b"\xff" * 14, None, "malformed"),
    (encode(Beacon(PLAN.seed_client(1), 0, None, frozenset()), MAC)[:-3], None, "malformed"),
    (encode(Beacon(PLAN.seed_client(1), 0, None, frozenset()), MAC), b"k" * 32, "unauthenticated"),
    (encode(Beacon(PLAN.seed_client(1), 0, None, frozenset()), MAC, key=b"x" * 32), b"k" * 32, "bad-mac"),
])
def test_bad_beacons_are_named(frame, key, reason):
    with pytest.raises(BadBeacon) as raised:
        decode(frame, PLAN.network, key=key)
    assert raised.value.reason == reason


def test_padding_after_a_beacon_is_ignored():
    beacon = Beacon(PLAN.shoot_client(1), 0, 0, frozenset({0}))
    assert decode(encode(beacon, MAC) + b"\0" * 20, PLAN.network) == beacon


def test_no_peer_known_leaves_the_bond_to_the_kernel():
    core = ServerSteering(SteeringConfig(PLAN.seed_client(3), PLAN, 2), 0.0)
    effects = core.handle(BondSeen(0.0, frozenset({1}), 1, 0)) + core.handle(Tick(5.0))
    assert not [e for e in effects if isinstance(e, SetPrimary)]
    assert core.alone() is None


def test_the_tap_in_use_losing_carrier_moves_the_bond_at_once():
    """The kernel would leave the slave at its next miimon tick; steering writes the primary
    on the link event. Without peers (vpn2's fleet) the kernel's own failover stays."""
    me, peer = PLAN.seed_client(3), PLAN.shoot_client(0)
    core = ServerSteering(SteeringConfig(me, PLAN, 2), 0.0)
    core.handle(BondSeen(0.0, frozenset({0, 1}), 0, 0))
    for server in (0, 1):
        core.handle(BeaconHeard(0.1, server, Beacon(peer, server, 0, frozenset({0, 1}), frozenset({me}))))
    effects = core.handle(BondSeen(0.15, frozenset({1}), 0, 0))
    assert SetPrimary(1, move=True, reason="carrier") in effects
    assert not [e for e in core.handle(Tick(0.16)) if isinstance(e, SetPrimary)]  # asked once
    lonely = ServerSteering(SteeringConfig(me, PLAN, 2), 0.0)
    lonely.handle(BondSeen(0.0, frozenset({0, 1}), 0, 0))
    assert not [e for e in lonely.handle(BondSeen(0.15, frozenset({1}), 0, 0)) if isinstance(e, SetPrimary)]


def fleet(**kwargs) -> Fleet:
    return Fleet(seed=kwargs.pop("seed", 1), **kwargs)


def worst(f: Fleet, since: float, until: float | None = None) -> float:
    return max(f.longest_separation(since, until).values())


def one_server(f: Fleet) -> set:
    return set(f.servers_in_use().values())


@pytest.mark.parametrize("seed", range(3))
def test_server_killed_and_back_no_peer_apart_and_home_again(seed):
    f = fleet(seed=seed)
    f.kill_server(0, 10)
    f.start_server(0, 20)
    f.run(20)
    assert one_server(f) == {1}
    f.run(45)
    assert worst(f, 5) == 0.0
    assert one_server(f) == {0}  # home once every peer reached it for a while


def test_vpn2_baseline_pays_for_the_return():
    f = fleet(seed=1, vpn2=EVERYONE)
    f.kill_server(0, 10)
    f.start_server(0, 20)
    f.run(45)
    assert worst(f, 19.9) > 0.5  # peers fail back seconds apart


@pytest.mark.parametrize("server", [0, 1])
def test_black_hole_of_the_server_in_use_everyone_leaves_within_a_second(server):
    # A long settle keeps the fleet where a server kill put it (no fail-back).
    f = fleet(seed=3, config={"settle": 60.0})
    if server == 1:  # get the fleet onto server 1 first; server 0 is back and healthy
        f.kill_server(0, 2)
        f.start_server(0, 3)
    f.black_hole(server, 10, 30)
    f.run(30)
    assert worst(f, 9, 30) <= 1.0
    assert one_server(f) == {1 - server}
    f.run(40)
    assert worst(f, 9) <= 1.0


def test_black_hole_of_one_pods_leg_is_left_within_two_seconds():
    """Only shoot1 ↔ server 0 is lost (its carrier stays): the others still reach some
    peers there, so they wait confirm_fewer before they move."""
    f = fleet(seed=5)
    f.leg_black_hole("shoot1", 0, 10, 30)
    f.run(30)
    assert worst(f, 9, 30) <= 2.0
    assert one_server(f) == {1}


def test_a_lone_client_flap_is_followed_or_left_within_two_seconds():
    f = fleet(seed=4)
    f.client_flap("api1", 0, 10, back_after=5.0)
    f.run(40)
    assert worst(f, 9) <= 2.0
    assert len(one_server(f)) == 1


def test_a_pod_starting_while_the_fleet_sits_on_server_1_joins():
    f = fleet(seed=6, later={"api2": 15.0})
    f.black_hole(0, 5, 60)  # server 0 passes nothing, its TCP stays up: the fleet goes to 1
    f.run(14)
    assert one_server(f) == {1}
    f.run(30)
    assert worst(f, 15.5) <= 2.0  # the newcomer's tap0 may come first: it leaves it
    assert one_server(f) == {1}


def test_a_pod_restarting_rejoins():
    f = fleet(seed=7)
    f.kill_server(0, 5)
    f.start_server(0, 8)
    f.run(9)
    f.start_pod("shoot0", at=9.0)  # its tap0 may connect first; the fleet is still on 1
    f.run(30)
    assert worst(f, 10) <= 2.0
    assert len(one_server(f)) == 1


def test_server_1_dies_after_a_roll_of_server_0():
    f = fleet(seed=8)
    f.kill_server(0, 5)
    f.start_server(0, 6, reconnect=(1, 6))
    f.kill_server(1, 9)  # the fleet sits on 1, server 0's clients partly back
    f.run(30)
    assert one_server(f) == {0}
    assert worst(f, 16) == 0.0  # once every client is back on 0


def test_both_down_then_one_back_and_a_roll_of_1_right_after_0():
    f = fleet(seed=9)
    f.kill_server(0, 5)
    f.kill_server(1, 5.5)
    f.start_server(1, 8)
    f.run(20)
    assert one_server(f) == {1}
    f.start_server(0, 20)
    f.kill_server(1, 35)  # roll of server 1 right after server 0 came back
    f.start_server(1, 37)
    f.run(60)
    assert worst(f, 36) == 0.0
    assert one_server(f) == {0}


def test_a_vpn2_peer_is_not_stranded():
    f = fleet(seed=10, vpn2=("api1",))
    f.kill_server(0, 10)
    f.start_server(0, 20)
    f.run(50)
    assert one_server(f) == {0}  # where vpn2's primary tap0 takes it
    assert worst(f, 40) == 0.0


def test_a_black_hole_with_a_vpn2_peer_keeps_ours_together():
    f = fleet(seed=11, vpn2=("api1",))
    f.black_hole(0, 10, 20)
    f.run(40)
    separated = f.longest_separation(9)
    assert separated["api0"] <= 1.0 and separated["api2"] <= 1.0
    assert one_server(f) == {0}


def test_a_stream_of_beacons_does_not_put_off_our_own():
    """Each beacon heard moves the 'peer goes stale' wake-up later; the next beacon of
    our own must stay due (a daemon that only ever received would go silent)."""
    me = PLAN.seed_client(3)
    core = ServerSteering(SteeringConfig(me, PLAN, 2), 0.0)
    core.handle(BondSeen(0.0, frozenset({0, 1}), 0, 0))
    sent = 0
    t = 0.0
    while t < 5.0:
        t += 0.01
        peer = Beacon(PLAN.shoot_client(int(t * 100) % 2), 0, 0, frozenset({0, 1}), frozenset({me}))
        core.handle(BeaconHeard(t, 0, peer))
        if core.next_wakeup() <= t:
            sent += sum(isinstance(e, SendBeacon) for e in core.handle(Tick(t)))
    assert sent >= 2 * (5.0 / core.config.beacon_interval) * 0.9  # two servers


def test_beacons_late_through_every_server_move_nobody():
    f = fleet(seed=12)
    f.run(9)
    moves = {name: pod.moves for name, pod in f.pods.items()}
    for k in range(5):
        f.stall(10 + 3 * k, 2.0)  # longer than dead_after, on both servers at once
    f.run(30)
    assert {name: pod.moves for name, pod in f.pods.items()} == moves


def test_a_peer_gone_silent_everywhere_counts_against_no_server():
    """A peer that stops (its daemon restarted, its pod gone) whose last beacon through
    server 1 came later than through server 0 (a busy node delivers late): once it is
    silent through every server that difference is no evidence against server 0."""
    me = PLAN.seed_client(3)
    shoots = [PLAN.shoot_client(0), PLAN.shoot_client(1)]
    core = ServerSteering(SteeringConfig(me, PLAN, 2), 0.0)
    core.handle(BondSeen(0.0, frozenset({0, 1}), 0, 0))
    moves = []
    t = 0.0
    while t < 15.0:
        t = round(t + 0.05, 2)
        for j, shoot in enumerate(shoots):
            for server in (0, 1):
                stops = 5.0 if server == 0 else 5.45  # shoot 1's last beacon through server 1 came late
                if int(t * 100) % 20 == 0 and (j == 0 or t <= stops):
                    core.handle(BeaconHeard(t, server, Beacon(shoot, server, 0, frozenset({0, 1}), frozenset({me}))))
        moves += [e for e in core.handle(Tick(t)) if isinstance(e, SetPrimary) and e.move]
    assert moves == []
    assert core.reach(0) == core.reach(1) == set(shoots)
