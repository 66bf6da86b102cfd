"""The netlink adapter on a real kernel: deletes of what is not there are
no-ops, typed dumps, errno → domain errors, and the event stream (link down,
route deleted, the pre-filter, overflow)."""

from __future__ import annotations

import asyncio
from ipaddress import IPv6Address, ip_network

import pytest
from pyroute2.arp import ARPHRD_ETHER

from netlink_adapter.errors import EventsLost, NotFound
from netlink_adapter.events import EventStream, LinkEvent, RouteEvent
from netlink_adapter.headers import RouteHeader
from netlink_adapter.ip6tnl import dump_ip6tnl, ensure_ip6tnl
from netlink_adapter.links import Ensured, LinkFacts, delete_link, dump_links, link_index
from netlink_adapter.routes import RT_TABLE_MAIN, RTN_UNICAST, RouteFacts, delete_route, dump_routes, replace_route
from tests.netns import nsutil

PROTO = 118
V4, V6, V4_NET = ip_network("10.96.0.1/32"), ip_network("fd00:96::1/128"), ip_network("100.64.0.0/13")
RT_TABLE_LOCAL = 255  # linux/rtnetlink.h; pyroute2 has no name for it


async def dummy(ipr, name: str) -> int:
    await ipr.link("add", ifname=name, kind="dummy")
    index = await link_index(ipr, name)
    await ipr.link("set", index=index, state="up")
    return index


async def next_event(stream: EventStream, matches, timeout: float = 5.0):
    """The first event ``matches`` accepts, and how many came before it."""
    before = 0
    async with asyncio.timeout(timeout):
        async for event in stream:
            if matches(event):
                return event, before
            before += 1
    raise AssertionError("event stream ended")


async def test_deletes_of_what_is_not_there_are_no_ops(netns, ipr_factory):
    ipr = await ipr_factory(netns)
    d0, d1 = await dummy(ipr, "d0"), await dummy(ipr, "d1")
    for dst in (V4, V6):
        assert await delete_route(ipr, dst) is False, f"{dst}: never there"
        await replace_route(ipr, dst, d0, proto=PROTO)
        assert await delete_route(ipr, dst, oif=d1) is False, "only through d1: the route through d0 stays"
        assert await delete_route(ipr, dst, proto=PROTO + 1) is False, "only someone else's: ours stays"
        assert RouteFacts(dst, d0, PROTO, RT_TABLE_MAIN, RTN_UNICAST) in await dump_routes(ipr)
        assert await delete_route(ipr, dst, oif=d0) is True
        assert await delete_route(ipr, dst, oif=d0) is False, "twice: done already"
        assert dst not in {route.dst for route in await dump_routes(ipr)}
    assert await delete_link(ipr, "no-such-link") is False
    assert await delete_link(ipr, "d1") is True
    assert await link_index(ipr, "d1") is None
    assert await delete_link(ipr, "d1") is False
    assert await delete_route(ipr, V4, oif=d1) is False, "through a device that is gone (ENODEV)"
    with pytest.raises(NotFound):
        await replace_route(ipr, V4, d1, proto=PROTO)


async def test_typed_dumps(netns, ipr_factory):
    ipr = await ipr_factory(netns)
    d0 = await dummy(ipr, "d0")
    for dst in (V4, V6, V4_NET):
        await replace_route(ipr, dst, d0, proto=PROTO)
    main = await dump_routes(ipr)
    for dst in (V4, V6, V4_NET):
        assert RouteFacts(dst, d0, PROTO, RT_TABLE_MAIN, RTN_UNICAST) in main
    assert {route.table for route in main} == {RT_TABLE_MAIN}
    assert {route.dst for route in main if route.is_host and route.oif == d0} == {V4, V6}
    assert RT_TABLE_LOCAL in {route.table for route in await dump_routes(ipr, table=None)}, "every table"

    links = {link.name: link for link in await dump_links(ipr)}
    assert links["d0"] == LinkFacts(
        d0, "d0", None, links["d0"].carrier, None, up=True, device_type=ARPHRD_ETHER, mac=links["d0"].mac,
    )
    assert links["d0"].mac is not None and len(links["d0"].mac.split(":")) == 6

    local, remote = IPv6Address("fd8f::1"), IPv6Address("fd8f::2")
    index, outcome = await ensure_ip6tnl(ipr, "t0", local, remote)
    assert outcome is Ensured.CREATED
    (tunnel,) = [t for t in await dump_ip6tnl(ipr) if t.name == "t0"]
    assert (tunnel.index, tunnel.local, tunnel.remote, tunnel.up) == (index, local, remote, True)
    assert tunnel.standard and tunnel.matches(local, remote) and tunnel.encap_limit == 0
    assert await ensure_ip6tnl(ipr, "t0", local, remote) == (index, Ensured.KEPT)


async def test_event_stream_delivers_a_route_delete_and_a_link_down(netns, ipr_factory):
    ipr = await ipr_factory(netns)
    d0 = await dummy(ipr, "d0")
    await replace_route(ipr, V4, d0, proto=PROTO)
    async with EventStream(netns=netns) as stream:
        assert await delete_route(ipr, V4, oif=d0)
        gone, _ = await next_event(stream, lambda e: isinstance(e, RouteEvent) and e.deleted)
        assert gone.route == RouteFacts(V4, d0, PROTO, RT_TABLE_MAIN, RTN_UNICAST)
        await ipr.link("set", index=d0, state="down")
        down, _ = await next_event(stream, lambda e: isinstance(e, LinkEvent) and e.link.index == d0)
        assert not down.deleted and not down.link.up
        assert (down.link.name, down.link.device_type) == ("d0", ARPHRD_ETHER)
        await ipr.link("del", index=d0)
        deleted, _ = await next_event(stream, lambda e: isinstance(e, LinkEvent) and e.deleted)
        assert deleted.link.index == d0


async def test_only_what_the_prefilter_wants_is_decoded(netns, ipr_factory):
    ipr = await ipr_factory(netns)
    route_deletes = EventStream(lambda header: isinstance(header, RouteHeader) and header.deleted, netns=netns)
    async with route_deletes as stream, EventStream(netns=netns) as everything:
        d0 = await dummy(ipr, "d0")
        await replace_route(ipr, V4, d0, proto=PROTO)
        await delete_route(ipr, V4, oif=d0)
        # Without the filter the device and the route addition come first (shown on the same changes):
        _, unfiltered_before = await next_event(everything, lambda e: isinstance(e, RouteEvent) and e.deleted)
        assert unfiltered_before >= 2
        event, before = await next_event(stream, lambda e: True)
        assert (before, event) == (0, RouteEvent(RouteFacts(V4, d0, PROTO, RT_TABLE_MAIN, RTN_UNICAST), deleted=True))


async def test_an_overflow_is_reported_as_events_lost(netns):
    async with EventStream(netns=netns, rcvbuf=4096) as stream:
        # The event loop is blocked while ip creates the devices: nothing reads the socket.
        batch = "".join(f"link add ov{i} type dummy\n" for i in range(300))
        nsutil.run_in(netns, ["sh", "-c", f"printf '{batch}' | ip -batch -"])
        with pytest.raises(EventsLost):
            async with asyncio.timeout(10):
                async for _ in stream:
                    pass
