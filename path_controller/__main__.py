"""``python -m path_controller`` (console script ``path-controller``).

Exit status: 0 after SIGTERM/SIGINT (routes left in place); 1 when the ICMPv6
socket or the HTTP port cannot be opened (one line says why) or a loop ended
(logged with its name); 2 on invalid configuration (one line names the
variable).
"""

from __future__ import annotations

import argparse
import sys

from pyroute2 import AsyncIPRoute

from announcement import load_key
from daemonkit.config import config_error, load_or_exit
from daemonkit.http import Endpoints, HttpServer
from daemonkit.lifecycle import Daemon, ExitCode, run
from daemonkit.logs import setup_logging
from path_controller.config import PathControllerSettings
from path_controller.controller import PathController

PROGRAM = "path-controller"


async def serve(
    settings: PathControllerSettings, key: bytes | None, daemon: Daemon, controller_class=PathController
) -> ExitCode:
    """Probe, route and announce until stopped; routes and tunnels stay as they are for the
    next instance. ``controller_class`` lets a benchmark run another probe timing."""
    ipr = AsyncIPRoute()
    daemon.on_close(ipr.close)
    controller = await daemon.open(controller_class(settings, ipr, key=key))
    endpoints = Endpoints(controller.registry, controller.heartbeats.check, controller.ready)
    await daemon.open(HttpServer(endpoints, settings.http_host, settings.http_port))
    daemon.loops(controller.tasks())
    return await daemon.supervise()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=PROGRAM,
        description="Keep a kube-apiserver's routes to the shoot on a healthy vpn-shoot; "
        "configured by environment variables (see README).",
    )
    parser.parse_args(argv)
    settings = load_or_exit(PathControllerSettings, PROGRAM)
    key = None
    if settings.announce_key_file is not None:
        try:
            key = load_key(settings.announce_key_file)
        except ValueError as exc:
            config_error(PROGRAM, f"ANNOUNCE_KEY_FILE: {exc}")
    setup_logging(settings.log_level)
    return run(PROGRAM, lambda daemon: serve(settings, key, daemon))


if __name__ == "__main__":
    sys.exit(main())
