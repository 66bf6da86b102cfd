"""Link lookups on a long-lived netlink socket must not leave anything behind.

The daemons look links up for as long as they run (the path-controller every
ROUTE_RESYNC_INTERVAL); pyroute2's own ``link("get")`` leaves the kernel's
acknowledgement queued on the socket each time. Runs on the host kernel: the
loopback device is all it needs.
"""

import gc
import tracemalloc

from netlink_adapter import AsyncIPRoute, links

LOOKUPS = 1000


async def lookups(ipr: AsyncIPRoute) -> None:
    for _ in range(LOOKUPS):
        assert (await links.link_by_name(ipr, "lo"))["index"] == 1
        assert await links.link_by_name(ipr, "no-such-link") is None
        assert await links.link_index(ipr, "lo") == 1
        assert (await links.link_by_index(ipr, 1)).get("IFLA_IFNAME") == "lo"


async def test_link_lookups_do_not_grow_memory():
    ipr = AsyncIPRoute()
    tracemalloc.start()
    try:
        await lookups(ipr)  # warm caches and pools (traced, so their later frees count too)
        gc.collect()
        before = tracemalloc.get_traced_memory()[0]
        await lookups(ipr)
        await lookups(ipr)
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
        ipr.close()
    # pyroute2's link("get") grows by about 75 bytes a lookup: 600 KiB here.
    assert grown < 16 * 1024, f"{grown} bytes more after {8 * LOOKUPS} lookups"
