"""Process lifecycle shared by the daemons: signals, supervised loops, exit codes, liveness.

One shape for every daemon::

    async def serve(daemon: Daemon) -> ExitCode:
        ipr = AsyncIPRoute()
        daemon.on_close(ipr.close)                       # closed last
        controller = await daemon.open(Controller(ipr))  # start() now, close() on the way out
        await daemon.open(HttpServer(endpoints, host, port))
        daemon.loops(controller.tasks())                 # named tasks, supervised
        return await daemon.supervise()                  # OK after SIGTERM, FAILED if a loop ends

    sys.exit(run("my-daemon", serve))

SIGTERM and SIGINT set ``daemon.stopping`` (Kubernetes sends SIGTERM); a
second signal exits at once. On the way out the loops are cancelled (at most
``grace`` seconds), then what was opened is closed in reverse order. Kernel
state is left as it is for the next instance.
"""

from __future__ import annotations

import asyncio
import enum
import inspect
import logging
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping
from typing import Any, TypeVar

LOG = logging.getLogger(__name__)

R = TypeVar("R")
Loop = Coroutine[Any, Any, Any]


class ExitCode(enum.IntEnum):
    OK = 0  # stopped by SIGTERM/SIGINT (or done)
    FAILED = 1  # could not start, or a loop ended or raised
    CONFIG = 2  # invalid configuration


class StartupError(RuntimeError):
    """The daemon cannot start; the message is the one line an operator sees (exit 1)."""


def fail(program: str, message: str) -> ExitCode:
    """Tell the operator in one line why ``program`` gives up; returns ``ExitCode.FAILED``."""
    print(f"{program}: {message}", file=sys.stderr)
    return ExitCode.FAILED


def loop_names(coros: Iterable[Loop] | Mapping[str, Loop]) -> dict[str, Loop]:
    """Names for loops: a mapping keeps its keys; a coroutine is named after its method
    (``PathController._route_loop``), with ``-<k>`` for the k-th of several of the same
    method (``PathController._probe_loop-0``, ``-1``...)."""
    if isinstance(coros, Mapping):
        return dict(coros)
    coros = list(coros)
    bases = [".".join(coro.__qualname__.split(".")[-2:]) for coro in coros]
    seen: dict[str, int] = {}
    named = {}
    for base, coro in zip(bases, coros):
        k = seen[base] = seen.get(base, -1) + 1
        named[f"{base}-{k}" if bases.count(base) > 1 else base] = coro
    return named


class Daemon:
    """One daemon's lifetime as ``async with``: signal handling, supervised loops, orderly close."""

    def __init__(self, *, grace: float = 0.5, signals: tuple[signal.Signals, ...] = (signal.SIGTERM, signal.SIGINT)):
        self.grace = grace
        self.signals = signals
        self.stopping = asyncio.Event()  # set by stop() or a signal
        self._tasks: dict[asyncio.Task, str] = {}
        self._reported: set[asyncio.Task] = set()
        self._added = asyncio.Event()  # a loop was started while supervise() waits
        self._closers: list[tuple[str, Callable[[], object]]] = []

    # --- start and stop ---------------------------------------------------------

    async def __aenter__(self) -> Daemon:
        loop = asyncio.get_running_loop()
        for signum in self.signals:
            loop.add_signal_handler(signum, self._on_signal, signum)
        return self

    async def __aexit__(self, *exc_info) -> None:
        try:
            await self._cancel_loops()
            for what, close in reversed(self._closers):
                try:
                    result = close()
                    if inspect.isawaitable(result):
                        await result
                except Exception as exc:  # one failed close must not keep the others open
                    LOG.warning("close failed", extra={"what": what, "reason": str(exc) or type(exc).__name__})
        finally:
            loop = asyncio.get_running_loop()
            for signum in self.signals:
                loop.remove_signal_handler(signum)

    def _on_signal(self, signum: int) -> None:
        name = signal.Signals(signum).name
        if self.stopping.is_set():
            LOG.warning("second signal, exiting at once", extra={"signal": name})
            os._exit(ExitCode.FAILED)
        LOG.info("stopping", extra={"signal": name})
        self.stop()

    def stop(self) -> None:
        """What SIGTERM does: ``supervise()`` returns ``ExitCode.OK``."""
        self.stopping.set()

    def on_close(self, close: Callable[[], R]) -> Callable[[], R]:
        """Call ``close`` (plain or async) when the daemon exits, after the loops are cancelled;
        the last registered is called first."""
        self._closers.append((getattr(close, "__qualname__", repr(close)), close))
        return close

    async def open(self, resource: R) -> R:
        """``await resource.start()`` and ``resource.close()`` on exit (also when start fails
        halfway, so close must cope with a partial start)."""
        self.on_close(resource.close)
        started = resource.start()
        if inspect.isawaitable(started):
            await started
        return resource

    # --- loops --------------------------------------------------------------------

    def loop(self, name: str, coro: Loop) -> asyncio.Task:
        """Run ``coro`` as a task named ``name``; it is meant to run until the daemon stops."""
        if name in self._tasks.values():
            coro.close()
            raise ValueError(f"a loop named {name!r} runs already")
        task = asyncio.create_task(coro, name=name)
        self._tasks[task] = name
        self._added.set()
        return task

    def loops(self, coros: Iterable[Loop] | Mapping[str, Loop]) -> None:
        """Start several loops, named by ``loop_names``."""
        for name, coro in loop_names(coros).items():
            self.loop(name, coro)

    async def supervise(self) -> ExitCode:
        """Wait for ``stop()``/a signal (``OK``) or for a loop to end or raise: logged with
        its name, ``FAILED``."""
        stopping = asyncio.ensure_future(self.stopping.wait())
        try:
            while True:
                self._added.clear()
                added = asyncio.ensure_future(self._added.wait())
                await asyncio.wait([stopping, added, *self._tasks], return_when=asyncio.FIRST_COMPLETED)
                added.cancel()
                if ended := [task for task in self._tasks if task.done()]:
                    for task in ended:
                        self._report(task)
                    return ExitCode.FAILED
                if stopping.done():
                    return ExitCode.OK
        finally:
            stopping.cancel()

    def _report(self, task: asyncio.Task) -> None:
        if task in self._reported:
            return
        self._reported.add(task)
        name = self._tasks[task]
        if task.cancelled():
            LOG.error("loop cancelled", extra={"loop": name})
        elif (exc := task.exception()) is not None:
            LOG.error("loop failed", extra={"loop": name}, exc_info=exc)
        else:
            LOG.error("loop ended", extra={"loop": name})

    async def _cancel_loops(self) -> None:
        running = [task for task in self._tasks if not task.done()]
        for task in self._tasks:
            if task.done():
                self._report(task)  # ended before anyone supervised it: still worth a line
        for task in running:
            task.cancel()
        if running:
            await asyncio.wait(running, timeout=self.grace)
        if late := [self._tasks[task] for task in running if not task.done()]:
            LOG.warning("loops still stopping after the grace period", extra={"loops": late, "grace": self.grace})


def run(program: str, main: Callable[[Daemon], Awaitable[int | None]], *, grace: float = 0.5) -> int:
    """Run ``main(daemon)`` in a fresh event loop inside ``async with Daemon()``; its result is
    the exit status (None = 0). A ``StartupError`` is one line on stderr and exit 1."""

    async def runner() -> int:
        async with Daemon(grace=grace) as daemon:
            return int((await main(daemon)) or ExitCode.OK)

    try:
        return asyncio.run(runner())
    except StartupError as exc:
        LOG.error("cannot start", extra={"reason": str(exc)})
        return fail(program, str(exc))


class Heartbeats:
    """Liveness of a daemon's loops: each loop beats; /healthz fails when one is stale."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self.clock = clock
        self._last: dict[str, float] = {}
        self._allowed: dict[str, float] = {}

    def register(self, name: str, allowed_gap: float) -> None:
        self._allowed[name] = allowed_gap
        self._last[name] = self.clock()

    def beat(self, name: str) -> None:
        self._last[name] = self.clock()

    def check(self) -> tuple[bool, str]:
        now = self.clock()
        stale = [
            f"{name} last ran {now - self._last[name]:.1f} s ago (allowed {allowed:.1f} s)"
            for name, allowed in self._allowed.items()
            if now - self._last[name] > allowed
        ]
        return (False, "; ".join(stale)) if stale else (True, "ok")
