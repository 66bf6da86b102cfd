"""The kernel tests' proofs that an injected fault took effect (tests/netns/faults.py), pure parts."""

from __future__ import annotations

import pytest

from tests.netns.faults import QdiscCounters, assert_black_hole, assert_loss_near, round_trip_loss


def test_round_trip_loss():
    assert round_trip_loss(0.2) == pytest.approx(0.36)
    assert round_trip_loss(0.0) == 0 and round_trip_loss(1.0) == 1


@pytest.mark.parametrize(("lost", "sent"), [(72, 200), (40, 200), (105, 200), (432, 1200)])
def test_loss_in_the_band_passes(lost, sent):
    assert assert_loss_near(lost, sent, 0.36, "pings") == lost / sent


@pytest.mark.parametrize(("lost", "sent"), [(0, 200), (200, 200), (35, 200), (110, 200), (300, 1200)])
def test_no_loss_a_black_hole_or_the_wrong_loss_fails(lost, sent):
    with pytest.raises(AssertionError, match="the impairment is not what the test injects"):
        assert_loss_near(lost, sent, 0.36, "pings")


def test_too_few_packets_measure_nothing():
    with pytest.raises(AssertionError, match="too few"):
        assert_loss_near(10, 20, 0.36, "pings")


def test_black_hole_needs_drops_and_nothing_passed():
    assert_black_hole(QdiscCounters(sent=0, dropped=12), "link")
    with pytest.raises(AssertionError, match="passed 3 packets"):
        assert_black_hole(QdiscCounters(sent=3, dropped=12), "link")
    with pytest.raises(AssertionError, match="dropped 0"):
        assert_black_hole(QdiscCounters(), "link")
    assert QdiscCounters(1, 2) + QdiscCounters(3, 4) == QdiscCounters(4, 6)
