"""``python -m path_controller`` (console script ``path-controller``).

Exit status: 0 after SIGTERM/SIGINT (routes left in place); 1 when the ICMPv6
socket or the HTTP port cannot be opened (one line says why) or a loop ended
(logged with its name); 2 on invalid configuration (one line names the
variable).
"""

from __future__ import annotations

import sys

from announcement import load_key
from daemonkit.config import config_error, daemon_settings
from daemonkit.http import Endpoints, HttpServer
from daemonkit.lifecycle import Daemon, ExitCode, run
from daemonkit.logs import setup_logging
from netlink_adapter import AsyncIPRoute
from path_controller.config import PathControllerSettings
from path_controller.controller import PathController, PolicyFactory, our_probing

PROGRAM = "path-controller"


async def serve(
    settings: PathControllerSettings, key: bytes | None, daemon: Daemon, policy: PolicyFactory = our_probing
) -> ExitCode:
    """Probe, route and announce until stopped; routes and tunnels stay as they are for the
    next instance. ``policy`` lets a benchmark run another probe timing."""
    ipr = AsyncIPRoute()
    daemon.on_close(ipr.close)
    controller = await daemon.open(PathController(settings, ipr, key=key, policy=policy))
    endpoints = Endpoints(controller.registry, controller.heartbeats.check, controller.ready)
    await daemon.open(HttpServer(endpoints, settings.http_host, settings.http_port))
    daemon.loops(controller.tasks())
    return await daemon.supervise()


def main(
    argv: list[str] | None = None,
    *,
    policy: PolicyFactory = our_probing,
    program: str = PROGRAM,
    overrides: dict | None = None,
) -> int:
    """``policy``, ``program`` and ``overrides`` (settings fields) let a benchmark run
    the same daemon with another probe policy (benchmarks/vpn2_profile.py)."""
    purpose = "Keep a kube-apiserver's routes to the shoot on a healthy vpn-shoot"
    settings = daemon_settings(PathControllerSettings, program, purpose, argv)
    if overrides:
        settings = settings.model_copy(update=overrides)
    key = None
    if settings.announce_key_file is not None:
        try:
            key = load_key(settings.announce_key_file)
        except ValueError as exc:
            config_error(program, f"ANNOUNCE_KEY_FILE: {exc}")
    setup_logging(settings.log_level)
    return run(program, lambda daemon: serve(settings, key, daemon, policy))


if __name__ == "__main__":
    sys.exit(main())
