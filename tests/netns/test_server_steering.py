"""Server steering on the full HA topology with real OpenVPN and vpn2's client timing
(``connect-retry 1 5``, ``keepalive 10 30``): 2 servers, 3 kube-apiservers, 2 vpn-shoots.

The cases of issue 14, one after another on one topology; each starts with every bond
on server 0 and every daemon ready, proves its fault took effect (carrier gone, packets
dropped) and leaves the topology converged again. Bounds are generous (a loaded CI box);
the figures come from ``benchmarks/end_to_end.py``.
"""

from __future__ import annotations

import asyncio
import shutil
import time

import pytest
import pytest_asyncio

from benchmarks.common import Namespaces
from tests.netns import nsutil
from tests.netns.faults import assert_black_hole
from tests.netns.ha_topology import SHOOT_POD, SHOOT_POD6, SHOOT_TARGETS, HaTopology
from tests.netns.traffic import TcpEchoServer, TcpStream, UdpEchoServer, UdpStream

pytestmark = pytest.mark.asyncio(loop_scope="module")

LEAVE = 5.0  # seconds for every bond to leave a failed server (benchmark target: 1 s)
RECONNECT = 40.0  # vpn2's clients back off to 5 s between attempts; TLS on a slow box


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def topo(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("steer")
    logs = nsutil.REPO / "results" / "steering-logs"
    shutil.rmtree(logs, ignore_errors=True)
    async with Namespaces(logs, long_lived=True) as spaces:
        topology = await HaTopology.build(spaces.make_netns, spaces.ipr_factory, spaces.processes, workdir)
        topology.udp_echo = await UdpEchoServer(topology.shoot_net, SHOOT_TARGETS).start()
        topology.tcp_echo = await TcpEchoServer(topology.shoot_net).start()
        try:
            await topology.wait_bonds_on(0, timeout=RECONNECT)
            await topology.wait_converged()
            yield topology
        finally:
            topology.udp_echo.close()
            await topology.tcp_echo.aclose()


@pytest_asyncio.fixture(loop_scope="module")
async def streams(topo):
    """A UDP stream from every kube-apiserver and one TCP stream, flowing."""
    # 20 datagrams per second each: at 100/s three streams alone saturate the sandbox's one vCPU
    # (OpenVPN encrypts every datagram three times on its way), and every path stalls.
    udp = {api.name: await UdpStream(api.ns, str(SHOOT_POD), interval=0.05).start() for api in topo.apiservers}
    for stream in udp.values():
        await stream.wait_flowing()
    tcp = await TcpStream(topo.apiservers[0].ns, str(SHOOT_POD6)).start()
    yield udp, tcp
    for stream in udp.values():
        stream.close()
    tcp.close()


async def switches(topo) -> dict[str, float]:
    return {api.name: await topo.metric(api, "path_controller_switches_total", reason="primary down")
            for api in topo.apiservers}


OUR_MOVES = ("unreachable", "fewer-peers", "join", "fail-back")


async def our_moves(topo) -> dict[str, float]:
    """Per member: the moves its daemon made (not the kernel's)."""
    result = {}
    for member in topo.members:
        daemon = "path_controller" if member in topo.apiservers else "tunnel_controller"
        result[member.name] = sum([await topo.metric(member, f"{daemon}_server_moves_total", reason=reason)
                                   for reason in OUR_MOVES])
    return result


# After a black hole OpenVPN's TCP connections to that server resume only at their next
# retransmission, backed off for as long as the hole lasted (tens of seconds on a slow box).
SETTLE = 90.0


async def settle(topo, server: int = 0) -> None:
    await topo.wait_bonds_on(server, timeout=SETTLE)
    await topo.wait_converged()


def longest_gap(udp: dict[str, UdpStream], since: float) -> float:
    """The longest outage of any stream since ``since`` (lost datagrams, not pauses of the sender)."""
    now = time.monotonic() - 0.5  # answers to the last half second may still come
    return max(stream.longest_outage(since, now) for stream in udp.values())


def outages(udp: dict[str, UdpStream], since: float) -> dict[str, list[str]]:
    now = time.monotonic() - 0.5
    return {name: [f"+{when - since:.2f} s: {seconds:.2f} s" for when, seconds in stream.outages(since, now)]
            for name, stream in udp.items()}


async def test_server_killed_then_back_no_switch_and_the_tcp_stream_survives(topo, streams):
    udp, tcp = streams
    before = await switches(topo)
    t0 = time.monotonic()
    topo.kill(topo.servers[0], "openvpn")
    await topo.wait_carrier(topo.members, "tap0", on=False, timeout=10)  # the fault took effect
    await topo.wait_bonds_on(1, timeout=LEAVE)
    await nsutil.wait_for(lambda: all(s.recovery_after(t0) is not None for s in udp.values()), timeout=LEAVE,
                          message="traffic again on every stream")
    kill_gap = longest_gap(udp, t0)

    t1 = time.monotonic()
    topo.start_server(topo.servers[0])
    await topo.wait_carrier(topo.members, "tap0", on=True, timeout=RECONNECT)
    await topo.wait_bonds_on(0, timeout=RECONNECT)  # everyone home once every client is back
    await asyncio.sleep(1.0)  # a gap after the last move would show in this second
    return_gap = longest_gap(udp, t1)
    print(f"server 0 killed: longest gap {kill_gap * 1000:.0f} ms; back: longest gap {return_gap * 1000:.0f} ms")
    assert tcp.error is None, f"TCP stream broke: {tcp.error}"
    assert await switches(topo) == before, "a server event switched a primary vpn-shoot"
    assert kill_gap < 3.0
    assert return_gap < 1.5, outages(udp, t1)  # goal none; the benchmark's target is 0.1 s
    await topo.wait_converged()


@pytest.mark.parametrize("direction", ["both", "outgoing"])
async def test_black_holed_server_every_peer_leaves_it(topo, streams, direction):
    """Carrier stays up: only beacons tell. "outgoing": the server still receives but
    sends nothing (a one-way black hole)."""
    udp, tcp = streams
    server = topo.servers[0]
    before = await switches(topo)
    moved = await our_moves(topo)
    hole = topo.blackhole if direction == "both" else topo.blackhole_outgoing
    t0 = time.monotonic()
    hole(server)
    try:
        await topo.wait_bonds_on(1, timeout=LEAVE)
        took = time.monotonic() - t0
        await nsutil.wait_for(lambda: all(s.recovery_after(t0) is not None for s in udp.values()), timeout=LEAVE,
                              message="traffic again on every stream")
        counters = topo.underlay_counters(server) if direction == "both" else topo.outgoing_counters(server)
        assert_black_hole(counters, f"{server.name}'s underlay link ({direction})")
        assert all([await topo.carrier(m, "tap0") for m in topo.members]), "carrier stayed up"
        after = await our_moves(topo)
        assert all(after[name] > moved[name] for name in after), f"not every daemon moved its bond: {moved} → {after}"
        print(f"black hole ({direction}): every bond on server 1 after {took:.2f} s, "
              f"longest gap {longest_gap(udp, t0) * 1000:.0f} ms")
        if direction == "both":  # a one-way hole backs OpenVPN's TCP up first: the benchmark measures it
            assert tcp.error is None, f"TCP stream broke: {tcp.error}"
            assert await switches(topo) == before
    finally:
        hole(server, on=False)
        await settle(topo)


async def test_a_restarting_pod_and_a_lone_flap_join_the_fleet_on_server_1(topo, streams):
    """vpn-shoot-0's own connection to server 0 is black-holed: the fleet leaves server 0
    for server 1 although server 0 works for everyone else. A kube-apiserver whose
    clients and daemon restart joins it (its tap0 may connect first), and so does one
    whose own client to server 1 restarts alone."""
    udp, _ = streams
    shoot, server = topo.shoots[0], topo.servers[0]
    topo.cut_leg(shoot, server)
    try:
        await topo.wait_bonds_on(1, timeout=RECONNECT)
        assert topo.leg_drops(shoot, server) > 0, "the leg's black hole dropped nothing"

        api = topo.apiservers[1]
        for role in ("path-controller", "openvpn0", "openvpn1"):
            topo.kill(api, role)
        t0 = time.monotonic()
        topo.start_client(api, 0)  # server 0 works for it: its tap0 connects first
        await topo.wait_carrier([api], "tap0", on=True, timeout=RECONNECT)
        topo.start_client(api, 1)
        topo.start_path_controller(api)
        await topo.wait_bonds_on(1, timeout=RECONNECT)
        await nsutil.wait_for(lambda: udp[api.name].recovery_after(t0) is not None, timeout=10,
                              message=f"{api.name}'s traffic after its restart")

        flapper = topo.apiservers[2]
        topo.kill(flapper, "openvpn1")
        await topo.wait_carrier([flapper], "tap1", on=False, timeout=10)
        t1 = time.monotonic()
        topo.start_client(flapper, 1)
        await topo.wait_carrier([flapper], "tap1", on=True, timeout=RECONNECT)
        back = time.monotonic()
        # The kernel takes it back to server 1 at once (its peers are still connected there).
        await nsutil.wait_for(lambda: udp[flapper.name].recovery_after(back) is not None, timeout=5,
                              message=f"{flapper.name}'s traffic after its client came back")
        rejoined = udp[flapper.name].recovery_after(back)
        print(f"lone flap: {flapper.name} answered {rejoined:.2f} s after its client reconnected "
              f"({back - t1:.1f} s after it restarted)")
        assert rejoined < 3.0  # target 2 s
        await topo.wait_bonds_on(1, timeout=RECONNECT)  # and the fleet sits together again
    finally:
        topo.cut_leg(shoot, server, on=False)
        await settle(topo)


async def test_server_1_dies_right_after_a_roll_of_server_0(topo, streams):
    udp, _ = streams
    topo.kill(topo.servers[0], "openvpn")
    await topo.wait_bonds_on(1, timeout=LEAVE)
    topo.start_server(topo.servers[0])
    await topo.wait_carrier(topo.members, "tap0", on=True, timeout=RECONNECT)
    t0 = time.monotonic()
    topo.kill(topo.servers[1], "openvpn")  # before the fleet went home
    await topo.wait_carrier(topo.members, "tap1", on=False, timeout=10)
    await topo.wait_bonds_on(0, timeout=LEAVE)
    await nsutil.wait_for(lambda: all(s.recovery_after(t0) is not None for s in udp.values()), timeout=LEAVE,
                          message="traffic again on every stream")
    topo.start_server(topo.servers[1])
    await topo.wait_carrier(topo.members, "tap1", on=True, timeout=RECONNECT)
    await settle(topo)


async def test_both_servers_down_then_one_back(topo, streams):
    udp, _ = streams
    for server in topo.servers:
        topo.kill(server, "openvpn")
    await topo.wait_carrier(topo.members, "tap1", on=False, timeout=10)
    topo.start_server(topo.servers[1])
    t0 = time.monotonic()
    await topo.wait_bonds_on(1, timeout=RECONNECT)
    await nsutil.wait_for(lambda: all(s.recovery_after(t0) is not None for s in udp.values()), timeout=10,
                          message="traffic through server 1 again")
    topo.start_server(topo.servers[0])
    await settle(topo)  # home again once every client reconnected


async def test_a_peer_without_our_daemon_is_not_stranded(topo, streams):
    """vpn2's controller beside ours, or our daemon crashed: its bond behaves as the
    kernel and bonding setup leave it (vpn2's primary tap0). The others go home too."""
    udp, _ = streams
    api = topo.apiservers[2]
    topo.kill(api, "path-controller")
    try:
        topo.kill(topo.servers[0], "openvpn")
        await topo.wait_bonds_on(1, timeout=LEAVE)
        topo.start_server(topo.servers[0])
        await topo.wait_carrier(topo.members, "tap0", on=True, timeout=RECONNECT)
        await topo.wait_bonds_on(0, timeout=RECONNECT)
        t0 = time.monotonic()
        await nsutil.wait_for(lambda: udp[api.name].recovery_after(t0) is not None, timeout=5,
                              message=f"{api.name}'s traffic with the fleet home")
    finally:
        topo.start_path_controller(api)
    await topo.wait_converged()
