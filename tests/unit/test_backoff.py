"""daemonkit.backoff: doubling, capped, reset after a success."""

import pytest

from daemonkit.backoff import Backoff


def test_doubles_up_to_the_maximum():
    # The path-controller's route retry: 50 ms, doubling, at most 1 s.
    backoff = Backoff(0.05, 1.0)
    assert [backoff.next() for _ in range(7)] == pytest.approx([0.05, 0.1, 0.2, 0.4, 0.8, 1.0, 1.0])
    assert backoff.failures == 7


def test_reset_starts_over():
    backoff = Backoff(1.0, 30.0)
    for _ in range(10):
        backoff.next()
    backoff.reset()
    assert backoff.failures == 0
    assert backoff.next() == 1.0


def test_other_factor():
    backoff = Backoff(1.0, 100.0, factor=3)
    assert [backoff.next() for _ in range(5)] == [1.0, 3.0, 9.0, 27.0, 81.0]


def test_fails_for_ever_without_overflow():
    backoff = Backoff(1.0, 30.0)
    for _ in range(5000):
        delay = backoff.next()
    assert delay == 30.0


@pytest.mark.parametrize(("initial", "maximum", "factor"), [(0, 1, 2), (2, 1, 2), (1, 2, 0.5)])
def test_bad_parameters(initial, maximum, factor):
    with pytest.raises(ValueError):
        Backoff(initial, maximum, factor)
