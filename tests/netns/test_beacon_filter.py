"""The beacon sockets' kernel filter: a pod wakes only for beacons of its peers.

A veth pair in one namespace stands for a tap; beacons of both kinds of sender
go in, the filtered AF_PACKET socket reads only its peers' (the core would
ignore the others, so the filter changes only how often the daemon wakes).
"""

import socket
import time

import pytest

from bonding.plan import AddressPlan
from steering.beacon import ETHERTYPE, Beacon, decode, encode
from steering.core import SteeringConfig
from steering.runner import keep_peers_only
from tests.netns import nsutil

PLAN = AddressPlan.from_text()
SENDERS = (PLAN.seed_client(9), PLAN.shoot_client(0), PLAN.seed_client(300), PLAN.shoot_client(1))


@pytest.mark.parametrize("seed_side", [True, False], ids=["kube-apiserver", "vpn-shoot"])
def test_only_peers_beacons_are_read(netns, seed_side):
    nsutil.run_in(netns, ["sh", "-c", "ip link add v0 type veth peer name v1 && ip link set v0 up && ip link set v1 up"])
    me = PLAN.seed_client(5) if seed_side else PLAN.shoot_client(2)
    sockets = [nsutil.ns_socket(netns, socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETHERTYPE)) for _ in range(2)]
    receiver, sender = sockets
    try:
        receiver.bind(("v1", ETHERTYPE))
        assert keep_peers_only(receiver, SteeringConfig(me, PLAN, 2)) is None
        receiver.setblocking(False)
        sender.bind(("v0", ETHERTYPE))
        peers = [a for a in SENDERS if (PLAN.shoot_client_index(a) is not None) == seed_side]
        # A peer's beacon sent last marks the end: frames on a veth arrive in order, so
        # anything the filter let through by mistake is read before it.
        last = PLAN.shoot_client(7) if seed_side else PLAN.seed_client(7)
        for address in (*SENDERS, last):
            sender.send(encode(Beacon(address, 0, 0, frozenset({0}), frozenset()), b"\x02" * 6))
        heard = []
        deadline = time.monotonic() + 5
        while last not in heard and time.monotonic() < deadline:
            try:
                heard.append(decode(receiver.recv(2048), PLAN.network).sender)
            except BlockingIOError:
                time.sleep(0.01)
        assert heard == [*peers, last]
    finally:
        for sock in sockets:
            sock.close()
