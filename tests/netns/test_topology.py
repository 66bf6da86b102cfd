"""The test topology itself: peers reach each other over the bond, and the bond
fails over when a "server" (bridge) disappears for everybody."""

from tests.netns.topology import BondLab


async def test_bond_lab_reachability_and_server_failover(make_netns, ipr_factory):
    lab = await BondLab.create(make_netns, ipr_factory)
    seed = await lab.add_seed("apiserver0", 0x1234)
    shoot0 = await lab.add_shoot(0)
    shoot1 = await lab.add_shoot(1)
    await lab.wait_reachable(seed, shoot0)
    await lab.wait_reachable(seed, shoot1)
    # Server 0 gone for everybody: every bond moves to eth1 and the peers meet there.
    for peer in (seed, shoot0, shoot1):
        await lab.cut(peer, 0)
    await lab.wait_reachable(seed, shoot0)
    await lab.wait_reachable(shoot1, seed)
