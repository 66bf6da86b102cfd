"""BondWatch: which link messages mean this node's bond is failing over."""

from pyroute2.arp import ARPHRD_ETHER

from netlink_adapter.ip6tnl import ARPHRD_TUNNEL6
from netlink_adapter.links import LinkFacts
from path_controller.bondwatch import (
    ACTIVE_SLAVE_CHANGED,
    SLAVE_GAINED_CARRIER,
    SLAVE_LOST_CARRIER,
    BondWatch,
)

BOND, TAP0, TAP1 = 5, 3, 4


def bond(active: int | None) -> LinkFacts:
    return LinkFacts(BOND, "bond0", None, True, active, up=True, device_type=ARPHRD_ETHER)


def tap(index: int, carrier: bool, master: int | None = BOND) -> LinkFacts:
    return LinkFacts(index, f"tap{index - 3}", master, carrier, None, up=True, device_type=ARPHRD_ETHER)


def primed() -> BondWatch:
    watch = BondWatch("bond0")
    # A dump lists the slaves before their bond: that state is no event.
    for link in (tap(TAP0, True), tap(TAP1, True), bond(TAP0)):
        assert watch.observe(link) is None
    return watch


def test_a_slave_losing_carrier_is_a_failover():
    watch = primed()
    assert watch.observe(tap(TAP1, False)) == SLAVE_LOST_CARRIER  # the backup: the far side's bond may move
    assert watch.observe(tap(TAP1, False)) is None  # repeated messages are one event
    # Carrier back: the server returned, every bond fails back to tap0 on its own schedule.
    assert watch.observe(tap(TAP1, True)) == SLAVE_GAINED_CARRIER


def test_the_active_slave_changing_is_a_failover():
    watch = primed()
    assert watch.observe(bond(TAP0)) is None
    assert watch.observe(bond(TAP1)) == ACTIVE_SLAVE_CHANGED
    assert watch.observe(bond(None)) == ACTIVE_SLAVE_CHANGED  # no slave left
    assert watch.observe(bond(TAP0)) == ACTIVE_SLAVE_CHANGED


def test_other_links_are_ignored():
    watch = primed()
    assert watch.observe(tap(9, True, master=None)) is None
    assert watch.observe(tap(9, False, master=None)) is None
    assert watch.observe(tap(10, True, master=77)) is None
    assert watch.observe(tap(10, False, master=77)) is None  # enslaved elsewhere
    assert watch.observe(LinkFacts(6, "bond0-ip6tnl0", None, None, None, up=True, device_type=ARPHRD_TUNNEL6)) is None


def test_without_a_dump_the_first_messages_only_learn():
    watch = BondWatch("bond0")
    assert watch.observe(bond(TAP0)) is None
    assert watch.observe(tap(TAP0, False)) is None  # carrier never seen up
