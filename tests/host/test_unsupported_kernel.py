"""``bonding setup`` on a kernel without bonding/ip6tnl: the development and CI
machines' own kernel is one (no CONFIG_BONDING, no CONFIG_IPV6_TUNNEL, no modules)."""

import pytest

from tests.netns import nsutil


def host_lacks(ns: str) -> list[str]:
    checks = {
        "bonding": "ip link add b0 type bond",
        "ip6tnl": "ip link add t0 type ip6tnl mode any remote 2001:db8::1",
    }
    return [name for name, cmd in checks.items() if nsutil.run_in(ns, ["sh", "-c", cmd], check=False).returncode]


@pytest.fixture
def host_netns():
    ns = nsutil.create_netns("host")
    yield ns
    nsutil.delete_netns(ns)


def test_missing_features_named_in_one_line(host_netns):
    lacking = host_lacks(host_netns)
    if not lacking:
        pytest.skip("this kernel has bonding and ip6tnl; the error path needs one that lacks them (the CI machines do)")
    # A fresh namespace for the run under test: the probe above may have left devices.
    ns = nsutil.create_netns("host")
    try:
        result = nsutil.run_in(
            ns, [nsutil.PYTHON, "-m", "bonding", "setup"], check=False, env=nsutil.daemon_env(POD_NAME="kube-apiserver-0")
        )
        links = nsutil.run_in(ns, ["ip", "-o", "link", "show"]).stdout
    finally:
        nsutil.delete_netns(ns)
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("bonding: this kernel lacks ")
    for feature in lacking:
        assert feature in lines[0]
    assert "tap0" not in links and "bond0" not in links, "nothing was built"
