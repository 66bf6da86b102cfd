"""Notices this node's bond failing over (pure, no I/O).

When a vpn-seed-server dies or comes back, every pod's bond moves: here a
slave loses or gains carrier (OpenVPN closes the tap when its connection
breaks and opens it when it reconnects) or the active slave changes, and on
the far side each vpn-shoot's bond moves too, a few hundred ms (a server
death) or seconds (the fail-back to tap0 when a server returns: every client
reconnects on its own schedule) sooner or later. Every path
is interrupted and they come back one by one, so "the other vpn-shoot answered
while the primary did not" says nothing about the vpn-shoots for a moment.
Switching then would only break open connections (the shoot side
masquerades). The controller holds down verdicts while that settles.
"""

from __future__ import annotations

from netlink_adapter.links import LinkFacts

SLAVE_LOST_CARRIER = "slave_lost_carrier"
SLAVE_GAINED_CARRIER = "slave_gained_carrier"
ACTIVE_SLAVE_CHANGED = "active_slave_changed"
FAILOVER_EVENTS = (SLAVE_LOST_CARRIER, SLAVE_GAINED_CARRIER, ACTIVE_SLAVE_CHANGED)


class BondWatch:
    def __init__(self, bond_name: str):
        self.bond_name = bond_name
        self.bond_index: int | None = None
        self.active_slave: int | None = None
        self.carrier: dict[int, bool] = {}  # enslaved ifindex -> carrier

    def observe(self, link: LinkFacts) -> str | None:
        """The failover this message shows (SLAVE_LOST_CARRIER, SLAVE_GAINED_CARRIER,
        ACTIVE_SLAVE_CHANGED), if any.

        Call with the initial link dump first: what is already there is no event.
        """
        if link.name == self.bond_name:
            known = self.bond_index is not None
            self.bond_index = link.index
            before, self.active_slave = self.active_slave, link.active_slave
            if known and link.active_slave != before:
                return ACTIVE_SLAVE_CHANGED
            return None
        if link.master is None or link.carrier is None:
            return None
        # Kept for every enslaved link: a dump may list the slaves before their bond.
        before = self.carrier.get(link.index)
        self.carrier[link.index] = link.carrier
        if before is None or before == link.carrier or link.master != self.bond_index:
            return None
        return SLAVE_GAINED_CARRIER if link.carrier else SLAVE_LOST_CARRIER
