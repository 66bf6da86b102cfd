"""``python -m bonding {setup,plan}`` (console script ``bonding``).

``setup`` builds the pod's bond network (the init container step); ``plan``
prints the addresses and device names the settings lead to, as JSON.

Exit status: 0 done; 1 the kernel lacks a feature or a netlink call failed
(one line says which); 2 invalid configuration (one line names the variable).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys

from bonding.config import BondingSettings
from bonding.plan import seed_tunnel_name, shoot_tunnel_name
from bonding.setup import setup
from daemonkit.config import load_or_exit
from daemonkit.lifecycle import ExitCode, fail
from daemonkit.logs import setup_logging
from netlink_adapter import AsyncIPRoute
from netlink_adapter.errors import KERNEL_ERRORS, KernelFeatureMissing

PROGRAM = "bonding"
LOG = logging.getLogger("bonding")


async def _setup(settings: BondingSettings) -> ExitCode:
    async with AsyncIPRoute() as ipr:
        try:
            await setup(settings, ipr)
        except KernelFeatureMissing as exc:
            return fail(PROGRAM, f"this kernel lacks {exc}; it cannot build the bond network")
        except KERNEL_ERRORS as exc:
            return fail(PROGRAM, f"setup failed: {exc}")
    return ExitCode.OK


def _plan(settings: BondingSettings) -> dict:
    plan = settings.plan
    own = settings.own_address
    shoot_clients = plan.shoot_clients(settings.ha_vpn_clients)
    result = {
        "vpn_network": str(plan.network),
        "bond_network": str(plan.bond_network),
        "side": "shoot" if settings.is_shoot_client else "seed",
        "bond_address": str(plan.on_bond(own)),
        "taps": [f"tap{i}" for i in range(settings.ha_vpn_servers)],
        "server_pools": [str(plan.server_pool(i)) for i in range(settings.ha_vpn_servers)],
        "shoot_clients": [str(a) for a in shoot_clients],
    }
    if settings.is_shoot_client:
        result["tunnel_name_pattern"] = "bond0ip6tnl%02x%02x (last two bytes of the seed client's address)"
    else:
        result["seed_client_index"] = plan.seed_client_index(own)
        result["tunnels"] = {seed_tunnel_name(j): str(a) for j, a in enumerate(shoot_clients)}
        result["shoot_side_tunnel_name"] = shoot_tunnel_name(own)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=PROGRAM, description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["setup", "plan"])
    args = parser.parse_args(argv)
    settings = load_or_exit(BondingSettings, PROGRAM)
    setup_logging(settings.log_level)
    if args.command == "plan":
        print(json.dumps(_plan(settings), indent=2))
        return ExitCode.OK
    return asyncio.run(_setup(settings))


if __name__ == "__main__":
    sys.exit(main())
