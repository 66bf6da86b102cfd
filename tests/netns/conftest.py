"""Fixtures for kernel-level tests (all tests under tests/netns are marked ``kernel``).

They need a kernel with bonding, ip6tnl and netem: the UML sandbox
(``python -m kernel_sandbox -- .venv/bin/python -m pytest -m kernel``) or a
host that has them. On a kernel without them the run stops with one clear
message instead of skipping.
"""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path

import pytest
import pytest_asyncio
from pyroute2 import AsyncIPRoute

from tests.netns import nsutil

HERE = Path(__file__).parent


def pytest_collection_modifyitems(config, items):
    for item in items:
        if HERE in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.kernel)


def _missing_features() -> list[str]:
    ns = nsutil.create_netns("probe")
    try:
        checks = {
            "bonding": "ip link add b0 type bond",
            "ip6tnl": "ip link add t0 type ip6tnl mode any remote 2001:db8::1 local 2001:db8::2",
            "veth": "ip link add v0 type veth peer name v1",
            "netem": "ip link add d0 type dummy && tc qdisc add dev d0 root netem loss 1%",
        }
        missing = []
        for name, cmd in checks.items():
            if nsutil.run_in(ns, ["sh", "-c", cmd], check=False).returncode != 0:
                missing.append(name)
        return missing
    finally:
        nsutil.delete_netns(ns)


@pytest.fixture(scope="session", autouse=True)
def kernel_features(request):
    """Stop the whole run, loudly, when the kernel cannot run these tests."""
    if not any(item.get_closest_marker("kernel") for item in request.session.items):
        return
    if os.geteuid() != 0:
        pytest.exit("kernel tests need root (network namespaces)", returncode=3)
    missing = _missing_features()
    if missing:
        pytest.exit(
            f"this kernel ({platform.release()}) lacks {', '.join(missing)}: run the kernel tests in the sandbox: "
            "python -m kernel_sandbox -- .venv/bin/python -m pytest -m kernel",
            returncode=3,
        )


@pytest.fixture(autouse=True)
def no_leaks():
    """Fail a test that leaves a namespace, root-namespace device, process or /tmp file behind."""
    before = nsutil.Snapshot.take()
    yield
    after = nsutil.Snapshot.take()
    leaks = after.leaks_since(before)
    # Clean up what leaked so one failure does not cascade into the next tests
    # (what a module-scoped fixture owns is not a leak and stays).
    for ns in after.namespaces - before.namespaces - nsutil.LONG_LIVED_NAMESPACES:
        nsutil.delete_netns(ns)
    for pid in set(after.processes) - set(before.processes) - nsutil.LONG_LIVED_PIDS:
        try:
            os.kill(pid, 9)
        except ProcessLookupError:
            pass
    if leaks:
        pytest.fail("test leaked: " + "; ".join(leaks), pytrace=False)


@pytest.fixture
def make_netns():
    """Factory for fresh named namespaces (DAD off, ping sockets allowed), removed at teardown."""
    created: list[str] = []

    def make(prefix: str = "t") -> str:
        name = nsutil.create_netns(prefix)
        created.append(name)
        return name

    yield make
    for name in reversed(created):
        nsutil.delete_netns(name)


@pytest.fixture
def netns(make_netns) -> str:
    return make_netns("t")


@pytest_asyncio.fixture
async def ipr_factory():
    """``await ipr_factory(ns)`` → AsyncIPRoute in that namespace, closed at teardown."""
    opened: list[AsyncIPRoute] = []

    async def make(ns: str) -> AsyncIPRoute:
        ipr = AsyncIPRoute(netns=ns)
        opened.append(ipr)
        return ipr

    yield make
    for ipr in opened:
        ipr.close()


@pytest.fixture
def processes(tmp_path_factory):
    """Start processes (daemons, OpenVPN, ping) in namespaces; killed at teardown."""
    group = nsutil.ProcessGroup(tmp_path_factory.mktemp("proc"))
    yield group
    group.kill_all()


def pytest_runtest_makereport(item, call):
    """On failure, attach the output of the processes the test started."""
    group = item.funcargs.get("processes") if hasattr(item, "funcargs") else None
    if call.when == "call" and call.excinfo is not None and isinstance(group, nsutil.ProcessGroup):
        for proc in group.processes:
            item.add_report_section("call", f"output of {' '.join(proc.argv[-4:])}", proc.output()[-4000:])


@pytest.fixture
def run_bonding():
    """Run ``python -m bonding setup`` in a namespace with the given environment."""

    def run(ns: str, **env) -> subprocess.CompletedProcess:
        return nsutil.run_in(ns, [nsutil.PYTHON, "-m", "bonding", "setup"], check=False, env=nsutil.daemon_env(**env))

    return run
