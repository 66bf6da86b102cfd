"""A path-controller with gardener/vpn2's probe timing, for side-by-side benchmarks.

    python -m benchmarks.vpn2_profile      (same environment as path_controller)

Everything but probing is ours (routes, announcements, HTTP). Probing
follows vpn2's constants (reference/vpn2-behavior.md §2.3-2.4): a round
every 2 s (a round that runs long is followed at once by the next); in a round
every target is pinged in parallel with up to 10 attempts of 1 s each, back to
back, stopping at the first answer; the round ends when the slowest target is
done; a target is good after one answer; the primary changes when it was not
good in a round and another one was. Benchmark code, not for production.
"""

from __future__ import annotations

import asyncio
import sys
from ipaddress import IPv6Address

from daemonkit.config import load_or_exit
from daemonkit.http import Endpoints, HttpServer
from daemonkit.lifecycle import cancel_and_wait, run
from daemonkit.logs import setup_logging
from netlink_adapter import AsyncIPRoute
from path_controller.config import PathControllerSettings
from path_controller.controller import PathController
from path_controller.probe import Health

TICK = 2.0
TIMEOUT = 1.0
TRIES = 10


class RoundVerdict:
    """vpn2 judges a target by its last round alone and switches to any target that passed it."""

    def __init__(self, state: Health):
        self.state = state

    def outlasted_by(self, other, now: float) -> bool:
        return True


class Vpn2TimingController(PathController):
    def _selection_view(self) -> dict[int, RoundVerdict]:
        return {j: RoundVerdict(health.state) for j, health in self.health.items()}

    def tasks(self) -> list:
        return [self.pinger.run(), self._announce_loop(), self._route_loop(), self._event_loop(), self._rounds()]

    def _on_answer(self, target: IPv6Address, rtt: float, now: float) -> None:
        j = self.target_index.get(target)
        if j is None:
            return
        self.metrics.rtt.labels(j).observe(rtt)
        waiter = self._answer_waiters.get(j)
        if waiter is not None and not waiter.done():
            waiter.set_result(True)

    async def _ping(self, j: int) -> bool:
        for _ in range(TRIES):
            try:
                await self.pinger.send(self.targets[j])
                self.metrics.probes_sent.labels(j).inc()
            except OSError:
                self.metrics.probe_send_errors.labels(j).inc()
            if await self._answer_by(j, self.clock() + TIMEOUT):
                return True
        return False

    async def _rounds(self) -> None:
        loop = asyncio.get_running_loop()
        self.heartbeats.register("rounds", allowed_gap=TICK * TRIES * 3)
        while True:
            started = loop.time()
            good = await asyncio.gather(*(self._ping(j) for j in range(len(self.targets))))
            now = self.clock()
            for j, ok in enumerate(good):
                new = Health.UP if ok else Health.DOWN
                if self.health[j].state is not new:
                    self.health[j].state = new
                    self._export_state(j)
            self._decide(now)
            self.heartbeats.beat("rounds")
            await asyncio.sleep(max(0.0, started + TICK - loop.time()))


async def serve(settings: PathControllerSettings, stop: asyncio.Event) -> int:
    ipr = AsyncIPRoute()
    # vpn2 holds nothing while a bond fails over (bond failovers are still counted).
    controller = Vpn2TimingController(settings.model_copy(update={"probe_failover_hold": 0.0}), ipr)
    http = HttpServer(Endpoints(controller.registry, controller.heartbeats.check, controller.ready),
                      settings.http_host, settings.http_port)
    await controller.start()
    await http.start()
    tasks = [asyncio.create_task(coro) for coro in controller.tasks()]
    try:
        await stop.wait()
        return 0
    finally:
        await cancel_and_wait(tasks)
        await http.close()
        controller.close()
        ipr.close()


def main() -> int:
    settings = load_or_exit(PathControllerSettings, "vpn2-profile")
    setup_logging(settings.log_level)
    return run(lambda stop: serve(settings, stop))


if __name__ == "__main__":
    sys.exit(main())
