"""The watchdog: vpn2's sliding window, threshold and cooldown, plus a start-up grace period."""

import pytest

from tunnel_controller.watchdog import Watchdog


def watchdog(**kwargs) -> Watchdog:
    return Watchdog(**{"window": 5, "threshold": 3, "cooldown": 4, "grace": 0.0, "started": 0.0, **kwargs})


def feed(dog: Watchdog, events: str, now: float = 100.0) -> str:
    """'F' failure, '.' success; returns '!' where the action fired, '-' elsewhere."""
    return "".join("!" if dog.record(e == "F", now) else "-" for e in events)


def test_fires_at_the_threshold_within_the_window():
    assert feed(watchdog(), "F.F.F") == "----!"


def test_failures_that_slid_out_of_the_window_do_not_count():
    # window 5: at the third failure the first has already left the window
    assert feed(watchdog(), "F...F.F") == "-------"
    assert feed(watchdog(), "F..FF") == "----!"  # still inside: fires


def test_cooldown_ignores_the_next_events_then_starts_from_an_empty_window():
    dog = watchdog()
    assert feed(dog, "FFF") == "--!"
    assert feed(dog, "FFFF") == "----", "cooldown 4: ignored"
    assert feed(dog, "FF") == "--", "window was cleared: two failures are not enough"
    assert feed(dog, "F") == "!"


def test_gardener_settings_fire_after_eight_silent_timeouts():
    dog = watchdog(window=20, threshold=8, cooldown=20)
    assert feed(dog, "." * 30 + "F" * 8) == "-" * 37 + "!"


def test_nothing_counts_during_the_grace_period():
    dog = watchdog(threshold=1, grace=30.0, started=1000.0)
    assert not dog.record(True, 1000.0)
    assert not dog.record(True, 1029.9)
    assert dog.in_grace(1029.9) and not dog.in_grace(1030.0)
    assert dog.failures == 0, "events during the grace period are not kept either"
    assert dog.record(True, 1030.0)


def test_successes_never_fire():
    assert feed(watchdog(threshold=1), "." * 50) == "-" * 50


@pytest.mark.parametrize(("window", "threshold", "cooldown"), [(5, 0, 1), (5, 6, 1), (5, 3, 0)])
def test_invalid_parameters(window, threshold, cooldown):
    with pytest.raises(ValueError):
        Watchdog(window=window, threshold=threshold, cooldown=cooldown, grace=0.0, started=0.0)
