"""``python -m tunnel_controller`` (console script ``tunnel-controller``).

Exit status: 0 after SIGTERM/SIGINT (tunnels and routes stay in place);
1 when it cannot start (no usable bond0 address within LISTEN_TIMEOUT, HTTP
port taken; one line says why); 2 on invalid configuration (one line names
the variable).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from daemonkit.config import load_or_exit
from daemonkit.http import Endpoints, HttpServer
from daemonkit.lifecycle import run
from daemonkit.logs import setup_logging
from netlink_adapter import AsyncIPRoute
from tunnel_controller.config import TunnelSettings
from tunnel_controller.controller import StartupError, TunnelController
from tunnel_controller.metrics import Metrics
from tunnel_controller.netlink import Kernel

PROGRAM = "tunnel-controller"
LOG = logging.getLogger("tunnel_controller")


async def serve(settings: TunnelSettings, stop: asyncio.Event) -> int:
    metrics = Metrics()
    ipr = AsyncIPRoute()
    controller = TunnelController(settings, Kernel(ipr, settings.route_protocol), metrics)
    http = HttpServer(
        Endpoints(metrics.registry, controller.heartbeats.check, controller.readiness),
        settings.http_host or None,
        settings.http_port,
    )
    try:
        try:
            await http.start()
        except OSError as exc:
            raise StartupError(f"cannot serve HTTP on port {settings.http_port}: {exc.strerror or exc}") from None
        await controller.run(stop)
        return 0
    except StartupError as exc:
        LOG.error("cannot start", extra={"error": str(exc)})
        print(f"{PROGRAM}: {exc}", file=sys.stderr)
        return 1
    finally:
        await http.close()
        ipr.close()
        LOG.info("stopped; tunnels and routes left in place")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog=PROGRAM,
        description="Keep one ip6tnl tunnel and back-route per announcing kube-apiserver; "
        "configured by environment variables (see README).",
    )
    parser.parse_args(argv)
    settings = load_or_exit(TunnelSettings, PROGRAM)
    setup_logging(settings.log_level)
    shown = settings.model_dump(mode="json")
    LOG.info("config parsed", extra={"config": shown})
    sys.exit(run(lambda stop: serve(settings, stop)))


if __name__ == "__main__":
    main()
