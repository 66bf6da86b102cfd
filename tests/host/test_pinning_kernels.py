"""Connection pinning where the UML sandbox cannot show it.

- SOCK_DESTROY: the host kernel has it (the UML kernel has tcp_diag built in without
  CONFIG_INET_DIAG_DESTROY), so a gone vpn-shoot's sockets are aborted at once here; veth
  paths stand in for ip6tnl, which the host lacks. Fails, not skips, on a host without it.
- A kernel without nftables for inet: the UML kernel with Debian's own modules.
"""

from __future__ import annotations

import errno
import io
import socket
import time
from pathlib import Path

import pytest_asyncio

from kernel_sandbox import Sandbox
from kernel_sandbox.modules import STOCK_MODULES
from path_controller.pinning import ConnectionPinning
from path_controller.pinning_rules import PinningConfig
from tests.netns import nsutil
from tests.netns.conftest import ipr_factory, make_netns  # noqa: F401  (fixtures)
from tests.netns.pinning_lab import DST4, DST6, PROTO, PinnedStream, PinningLab, UdpFlow, ViaEchoServer, wait_error

CONFIG = PinningConfig(tcp_only=False)  # the UDP socket below is pinned and aborted too


@pytest_asyncio.fixture
async def lab(make_netns, ipr_factory):  # noqa: F811
    lab = await PinningLab(make_netns, ipr_factory, path="veth").build()
    server = await ViaEchoServer(lab.dst).start()
    yield lab
    await server.aclose()


def socket_error(sock: socket.socket) -> int:
    return sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)


async def test_a_gone_vpn_shoots_sockets_are_aborted_at_once(lab):
    pinning = ConnectionPinning(lab.ipr, PROTO, CONFIG, netns=lab.seed)
    try:
        assert await pinning.probe() is None
        assert pinning.sockets_destroyable, "this host kernel lacks SOCK_DESTROY (CONFIG_INET_DIAG_DESTROY)"
        await pinning.install(lab.routed, await lab.tunnels())
        await pinning.new_connections_to(1)
        survivor = await PinnedStream(lab.seed, DST4).start()
        await pinning.new_connections_to(0)
        active = [await PinnedStream(lab.seed, DST4).start(), await PinnedStream(lab.seed, DST6).start()]
        idle = await PinnedStream(lab.seed, DST4, interval=3600).start()
        datagrams = UdpFlow(lab.seed, DST6)
        assert await datagrams.exchange() == 0
        assert [s.via for s in (survivor, *active, idle)] == [1, 0, 0, 0]
        await lab.kill_and_wait_silent(0, active)  # the death took effect
        await lab.switch(pinning, 1)
        acted = time.monotonic()
        closed = await pinning.close_connections(0)
        assert closed.destroyed == 4 and closed.flushed >= 4, closed
        # Idle or not, TCP or UDP: the sockets are aborted now, not at their next transmission.
        assert socket_error(datagrams.socket) == errno.ECONNABORTED
        await nsutil.wait_for(idle.reader.exception, timeout=2, message="the idle connection's error")
        assert isinstance(idle.reader.exception(), ConnectionAbortedError)
        await wait_error(active, timeout=2)
        print(f"errors {[(type(s.error).__name__, round(s.error_at - acted, 3)) for s in active]} after the action")
        assert all(isinstance(s.error, ConnectionAbortedError) for s in active)
        await survivor.wait_echoes(len(survivor.echoes) + 10)
        assert survivor.error is None and survivor.vias_since(acted) == {1}
        for stream in (survivor, *active, idle):
            stream.close()
        datagrams.close()
    finally:
        await pinning.remove()
        pinning.close()


def test_a_kernel_without_nftables_inet_gets_one_line(tmp_path: Path):
    """Debian's UML kernel with its own modules: nf_tables without the inet family."""
    probe = (
        "import asyncio\n"
        "from netlink_adapter import AsyncIPRoute\n"
        "from path_controller.pinning import ConnectionPinning\n"
        "async def main():\n"
        "    async with AsyncIPRoute() as ipr:\n"
        "        print('REASON', await ConnectionPinning(ipr, 118).probe())\n"
        "asyncio.run(main())\n"
    )
    output = io.BytesIO()
    sandbox = Sandbox(mounts=[tmp_path, nsutil.REPO], timeout=300, modules_dir=STOCK_MODULES)  # the guest's /tmp hides a repo there
    result = sandbox.run([nsutil.PYTHON, "-c", probe], cwd=nsutil.REPO, output=output)
    text = output.getvalue().decode(errors="replace")
    assert result.returncode == 0, text
    (reason,) = [line.removeprefix("REASON ") for line in text.splitlines() if line.startswith("REASON ")]
    assert reason.startswith("this kernel lacks nftables for inet (CONFIG_NF_TABLES_INET): "), reason
    assert "not supported" in reason and "\n" not in reason
