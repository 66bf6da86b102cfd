"""``python -m path_controller`` (console script ``path-controller``).

Exit status: 0 after SIGTERM/SIGINT (routes left in place); 1 when the ICMPv6
socket or the HTTP port cannot be opened (one line says why); 2 on invalid
configuration (one line names the variable).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from pyroute2 import AsyncIPRoute

from announcement import load_key
from daemonkit.config import config_error, load_or_exit
from daemonkit.http import Endpoints, HttpServer
from daemonkit.lifecycle import cancel_and_wait, run
from daemonkit.logs import setup_logging
from path_controller.config import PathControllerSettings
from path_controller.controller import PathController
from path_controller.sockets import PingSocketUnavailable

PROGRAM = "path-controller"
LOG = logging.getLogger("path_controller")


async def serve(settings: PathControllerSettings, key: bytes | None, stop: asyncio.Event) -> int:
    ipr = AsyncIPRoute()
    controller = PathController(settings, ipr, key=key)
    http = HttpServer(
        Endpoints(controller.registry, controller.heartbeats.check, controller.ready),
        settings.http_host,
        settings.http_port,
    )
    tasks: list[asyncio.Task] = []
    try:
        try:
            await controller.start()
            # Every target's series from the start, at 0 (PathController can pass
            # targets= to PathMetrics instead; this is idempotent).
            controller.metrics.add_targets(len(settings.targets))
            await http.start()
        except PingSocketUnavailable as exc:
            print(f"{PROGRAM}: {exc}", file=sys.stderr)
            return 1
        except OSError as exc:
            print(f"{PROGRAM}: cannot listen on HTTP port {settings.http_port}: {exc.strerror}", file=sys.stderr)
            return 1
        tasks = [asyncio.create_task(coro) for coro in controller.tasks()]
        stopping = asyncio.create_task(stop.wait())
        tasks.append(stopping)
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        failed = [t for t in done if t is not stopping and not t.cancelled() and t.exception() is not None]
        for task in failed:
            LOG.error("loop failed", exc_info=task.exception())
        return 1 if failed else 0
    finally:
        # Routes and tunnels stay as they are: the next instance adopts them.
        await cancel_and_wait(tasks)
        await http.close()
        controller.close()
        ipr.close()


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
    return run(lambda stop: serve(settings, key, stop))


if __name__ == "__main__":
    sys.exit(main())
