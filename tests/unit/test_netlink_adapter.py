"""The netlink adapter's pure parts: errno → domain errors, ensure outcomes,
fixed headers and the event pre-filter on crafted messages, message → facts."""

from __future__ import annotations

import errno
from ipaddress import ip_network
from socket import AF_INET, AF_INET6

import pytest
from pyroute2.arp import ARPHRD_ETHER
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl import RTM_DELLINK, RTM_DELROUTE, RTM_NEWLINK, RTM_NEWROUTE
from pyroute2.netlink.rtnl.ifinfmsg import IFF_UP, ifinfmsg
from pyroute2.netlink.rtnl.marshal import MarshalRtnl
from pyroute2.netlink.rtnl.rtmsg import rtmsg

from netlink_adapter.errors import (
    KERNEL_ERRORS,
    AlreadyExists,
    EventsLost,
    KernelError,
    KernelFeatureMissing,
    NotFound,
    creation_error,
    deleted,
    domain_error,
    event_socket_error,
    translated,
)
from netlink_adapter.events import LinkEvent, RouteEvent, PrefilteringMarshal, everything, prefilter, typed_event
from netlink_adapter.headers import LinkHeader, RouteHeader, nlmsg_header, parse_header
from netlink_adapter.ip6tnl import ARPHRD_TUNNEL6
from netlink_adapter.links import Ensured, LinkFacts, link_facts
from netlink_adapter.routes import RT_TABLE_MAIN, RTM_F_CLONED, RTN_UNICAST, RouteFacts, route_facts


# --- errors ------------------------------------------------------------------


@pytest.mark.parametrize("code", [errno.ENODEV, errno.ENOENT, errno.ESRCH, errno.EADDRNOTAVAIL])
def test_missing_objects_are_not_found(code):
    error = domain_error(NetlinkError(code))
    assert type(error) is NotFound and error.code == code


def test_other_errnos_keep_their_code_and_message():
    assert type(domain_error(NetlinkError(errno.EEXIST))) is AlreadyExists
    error = domain_error(NetlinkError(errno.EBUSY, "device busy"))
    assert type(error) is KernelError and (error.code, error.args[1]) == (errno.EBUSY, "device busy")
    assert isinstance(error, KERNEL_ERRORS) and isinstance(OSError(), KERNEL_ERRORS)


def test_eopnotsupp_on_create_names_the_missing_feature():
    error = creation_error(NetlinkError(errno.EOPNOTSUPP), "ip6tnl (CONFIG_IPV6_TUNNEL)")
    assert isinstance(error, KernelFeatureMissing) and str(error) == "ip6tnl (CONFIG_IPV6_TUNNEL)"
    assert type(creation_error(NetlinkError(errno.EEXIST), "ip6tnl")) is AlreadyExists


def test_an_overflowing_event_socket_means_events_lost():
    # pyroute2 raises ENOBUFS on a multicast socket as OSError, not NetlinkError.
    assert type(event_socket_error(OSError(errno.ENOBUFS, "No buffer space"))) is EventsLost
    assert type(event_socket_error(NetlinkError(errno.ENOBUFS))) is EventsLost
    closed = OSError(errno.EBADF, "Bad file descriptor")
    assert event_socket_error(closed) is closed


async def _raising(code: int | None):
    if code is not None:
        raise NetlinkError(code)


async def test_a_delete_of_something_absent_is_done():
    assert await deleted(_raising(None)) is True
    assert await deleted(_raising(errno.ESRCH)) is False
    assert await deleted(_raising(errno.ENODEV)) is False
    with pytest.raises(KernelError) as raised:
        await deleted(_raising(errno.EPERM))
    assert raised.value.code == errno.EPERM and isinstance(raised.value.__cause__, NetlinkError)


async def test_translated_functions_raise_domain_errors():
    @translated
    async def lookup(code):
        await _raising(code)
        return "found"

    assert await lookup(None) == "found"
    with pytest.raises(NotFound):
        await lookup(errno.ENODEV)
    with pytest.raises(AlreadyExists):
        await lookup(errno.EEXIST)


# --- outcomes ------------------------------------------------------------------


def test_ensure_outcomes():
    assert [o.value for o in Ensured] == ["kept", "created", "replaced", "adjusted"]
    assert Ensured.KEPT.then_adjusted() is Ensured.ADJUSTED
    for outcome in (Ensured.CREATED, Ensured.REPLACED, Ensured.ADJUSTED):
        assert outcome.then_adjusted() is outcome, "a change in place does not hide a creation"


# --- crafted messages -----------------------------------------------------------


def route_message(kind=RTM_DELROUTE, family=AF_INET, dst="10.96.0.1", dst_len=32, table=RT_TABLE_MAIN,
                  proto=119, oif=7, flags=0, sequence=0) -> bytes:
    msg = rtmsg()
    msg["header"]["type"] = kind
    msg["header"]["sequence_number"] = sequence
    msg.update(family=family, dst_len=dst_len, table=table, proto=proto, type=RTN_UNICAST, flags=flags)
    msg["attrs"] = [("RTA_TABLE", table), ("RTA_OIF", oif)] + ([("RTA_DST", dst)] if dst else [])
    msg.encode()
    return bytes(msg.data)


def link_message(kind=RTM_NEWLINK, name="bond0", index=5, up=True, device_type=ARPHRD_ETHER, active_slave=3) -> bytes:
    msg = ifinfmsg()
    msg["header"]["type"] = kind
    msg.update(ifi_type=device_type, index=index, flags=IFF_UP if up else 0)
    info = {"attrs": [("IFLA_INFO_KIND", "bond"), ("IFLA_INFO_DATA", {"attrs": [("IFLA_BOND_ACTIVE_SLAVE", active_slave)]})]}
    msg["attrs"] = [("IFLA_IFNAME", name), ("IFLA_CARRIER", 1), ("IFLA_MASTER", 9), ("IFLA_LINKINFO", info)]
    msg.encode()
    return bytes(msg.data)


def test_fixed_headers_read_from_bytes():
    data = link_message(RTM_DELLINK, index=42, up=False, device_type=ARPHRD_TUNNEL6)
    assert nlmsg_header(data).type == RTM_DELLINK
    assert parse_header(RTM_DELLINK, data) == LinkHeader(True, 0, ARPHRD_TUNNEL6, 42, 0)
    assert parse_header(RTM_NEWLINK, link_message(up=True)).up
    route = parse_header(RTM_NEWROUTE, route_message(RTM_NEWROUTE))
    assert route == RouteHeader(False, AF_INET, 32, RT_TABLE_MAIN, 119, 0, RTN_UNICAST, 0) and route.is_host
    assert not parse_header(RTM_DELROUTE, route_message(family=AF_INET6, dst="fd00::", dst_len=32)).is_host
    assert parse_header(2, data) is None  # NLMSG_ERROR: no fixed header of ours


def test_prefilter_decodes_only_what_is_wanted():
    parse = prefilter(lambda header: isinstance(header, RouteHeader) and header.deleted, MarshalRtnl().parse_one_message)

    def run(data: bytes):
        return parse(data, 0, len(data))

    assert run(route_message(RTM_DELROUTE)).get("RTA_DST") == "10.96.0.1"
    assert run(route_message(RTM_NEWROUTE)) is None
    assert run(link_message()) is None
    assert run(route_message(RTM_DELROUTE, flags=RTM_F_CLONED)) is None, "a cached exception is no route"
    assert prefilter(everything, MarshalRtnl().parse_one_message)(link_message(), 0, 0) is not None


def test_the_prefilter_sees_notifications_of_every_sequence_number():
    """A notification carries the sequence number of the request that caused it."""
    marshal = PrefilteringMarshal()
    marshal.hook = prefilter(lambda header: header.deleted, marshal.parse_one_message)
    for sequence in (0, 1234):
        data = route_message(RTM_NEWROUTE, sequence=sequence) + route_message(RTM_DELROUTE, sequence=sequence)
        assert [msg["event"] for msg in marshal.parse(data)] == ["RTM_DELROUTE"]


def parsed(data: bytes):
    (msg,) = MarshalRtnl().parse(data)
    return msg


def test_messages_as_facts_and_events():
    link = LinkFacts(5, "bond0", master=9, carrier=True, active_slave=3, up=True, device_type=ARPHRD_ETHER)
    assert link_facts(parsed(link_message())) == link
    assert typed_event(parsed(link_message(RTM_DELLINK))) == LinkEvent(link, deleted=True)
    route = RouteFacts(ip_network("10.96.0.1/32"), oif=7, proto=119, table=RT_TABLE_MAIN, type=RTN_UNICAST)
    assert route_facts(parsed(route_message())) == route and route.is_host
    assert typed_event(parsed(route_message(RTM_NEWROUTE))) == RouteEvent(route, deleted=False)
    default = route_facts(parsed(route_message(family=AF_INET6, dst=None, dst_len=0)))
    assert default.dst == ip_network("::/0") and not default.is_host
    assert route_facts(parsed(route_message(flags=RTM_F_CLONED))) is None
