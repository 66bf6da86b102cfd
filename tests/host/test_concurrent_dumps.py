"""Dumps on one shared netlink socket, from concurrent loops, all succeed.

The kernel runs one dump per socket and answers EBUSY to a second one while the
first is being read; the daemons share one AsyncIPRoute between their loops (at
start-up the route read and the announcer's address lookup collided). Runs on
the host kernel: the host namespace's loopback device is all it needs.
"""

import asyncio

from pyroute2.netlink.exceptions import NetlinkError

from netlink_adapter import AsyncIPRoute
from netlink_adapter.addresses import global_addresses
from netlink_adapter.links import dump_links
from netlink_adapter.routes import dump_routes
from netlink_adapter.rules import dump_fwmark_rules

ROUNDS = 20


async def test_the_kernel_refuses_a_second_dump_on_a_socket():
    """Why the adapter takes turns: pyroute2 alone sends both dumps, the kernel refuses one."""
    async with AsyncIPRoute() as ipr:

        async def links():
            return [msg async for msg in await ipr.link("dump")]

        async def routes():
            return [msg async for msg in await ipr.route("dump")]

        answers = []
        for _ in range(ROUNDS):
            answers += await asyncio.gather(links(), routes(), links(), return_exceptions=True)
    refused = [a for a in answers if isinstance(a, NetlinkError) and a.code == 16]
    assert refused, "no EBUSY: the kernel ran concurrent dumps on one socket"


async def test_the_adapters_dumps_take_turns():
    async with AsyncIPRoute() as ipr:
        for _ in range(ROUNDS):
            links, routes, addresses, rules, again = await asyncio.gather(
                dump_links(ipr), dump_routes(ipr, table=None), global_addresses(ipr, 1), dump_fwmark_rules(ipr),
                dump_links(ipr),
            )
            assert any(link.name == "lo" for link in links)
            assert [link.name for link in again] == [link.name for link in links]
