"""``python -m tunnel_controller`` (console script ``tunnel-controller``).

Exit status: 0 after SIGTERM/SIGINT (tunnels and routes stay in place);
1 when it cannot start (no usable bond0 address within LISTEN_TIMEOUT, HTTP
port taken; one line says why) or when a loop ended (logged with its name);
2 on invalid configuration (one line names the variable).
"""

from __future__ import annotations

import logging
import sys

from daemonkit.config import daemon_settings
from daemonkit.http import Endpoints, HttpServer
from daemonkit.lifecycle import Daemon, ExitCode, run
from daemonkit.logs import setup_logging
from netlink_adapter import AsyncIPRoute
from tunnel_controller.config import TunnelSettings
from tunnel_controller.controller import TunnelController
from tunnel_controller.metrics import Metrics
from tunnel_controller.netlink import Kernel

PROGRAM = "tunnel-controller"
LOG = logging.getLogger("tunnel_controller")


async def serve(settings: TunnelSettings, daemon: Daemon) -> ExitCode:
    daemon.on_close(lambda: LOG.info("stopped; tunnels and routes left in place"))  # the last word
    metrics = Metrics()
    ipr = AsyncIPRoute()
    daemon.on_close(ipr.close)
    controller = TunnelController(settings, Kernel(ipr, settings.route_protocol), metrics)
    endpoints = Endpoints(metrics.registry, controller.heartbeats.check, controller.readiness)
    await daemon.open(HttpServer(endpoints, settings.http_host or None, settings.http_port))
    return await controller.run(daemon)


def main(argv: list[str] | None = None) -> None:
    purpose = "Keep one ip6tnl tunnel and back-route per announcing kube-apiserver"
    settings = daemon_settings(TunnelSettings, PROGRAM, purpose, argv)
    setup_logging(settings.log_level)
    shown = settings.model_dump(mode="json")
    LOG.info("config parsed", extra={"config": shown})
    sys.exit(run(PROGRAM, lambda daemon: serve(settings, daemon)))


if __name__ == "__main__":
    main()
