"""daemonkit.lifecycle: supervised loops, stop and SIGTERM, orderly close, exit codes."""

import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from daemonkit.lifecycle import Daemon, ExitCode, loop_names


async def forever():
    await asyncio.Event().wait()


async def fails_soon():
    await asyncio.sleep(0.01)
    raise RuntimeError("netlink socket gone")


async def returns_soon():
    await asyncio.sleep(0.01)


def loop_records(caplog, msg):
    return [record for record in caplog.records if record.getMessage() == msg]


async def test_a_loop_that_raises_stops_the_daemon_with_its_name_logged(caplog):
    closed = []
    async with Daemon(signals=()) as daemon:
        daemon.on_close(lambda: closed.append("first opened"))
        daemon.on_close(lambda: closed.append("last opened"))
        steady = daemon.loop("receive", forever())
        daemon.loop("reconcile", fails_soon())
        assert await asyncio.wait_for(daemon.supervise(), 5) is ExitCode.FAILED
        assert closed == [], "nothing closed before the daemon exits"
    (record,) = loop_records(caplog, "loop failed")
    assert record.loop == "reconcile" and record.levelno == logging.ERROR
    assert "netlink socket gone" in str(record.exc_info[1])
    assert steady.cancelled(), "the other loops are cancelled on the way out"
    assert closed == ["last opened", "first opened"]


async def test_a_loop_that_returns_is_a_failure_too(caplog):
    async with Daemon(signals=()) as daemon:
        daemon.loop("watchdog", returns_soon())
        daemon.loop("receive", forever())
        assert await asyncio.wait_for(daemon.supervise(), 5) is ExitCode.FAILED
    assert [record.loop for record in loop_records(caplog, "loop ended")] == ["watchdog"]


async def test_a_loop_started_while_supervising_is_supervised(caplog):
    async with Daemon(signals=()) as daemon:
        supervising = asyncio.create_task(daemon.supervise())
        await asyncio.sleep(0.01)
        daemon.loop("late", fails_soon())
        assert await asyncio.wait_for(supervising, 5) is ExitCode.FAILED
    assert [record.loop for record in loop_records(caplog, "loop failed")] == ["late"]


async def test_stop_cancels_the_loops_promptly():
    async with Daemon(signals=()) as daemon:
        loops = [daemon.loop(f"loop{i}", forever()) for i in range(3)]
        asyncio.get_running_loop().call_later(0.05, daemon.stop)
        assert await asyncio.wait_for(daemon.supervise(), 5) is ExitCode.OK
        stopped = time.monotonic()
    assert time.monotonic() - stopped < 0.5
    assert all(loop.cancelled() for loop in loops)


async def test_a_loop_that_ignores_cancellation_delays_the_exit_by_the_grace_only(caplog):
    release = asyncio.Event()

    async def stubborn():
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            await release.wait()

    async with Daemon(signals=(), grace=0.2) as daemon:
        task = daemon.loop("stubborn", stubborn())
        await asyncio.sleep(0)
        daemon.stop()
        assert await daemon.supervise() is ExitCode.OK
        stopped = time.monotonic()
    assert 0.15 < time.monotonic() - stopped < 1.0
    (record,) = loop_records(caplog, "loops still stopping after the grace period")
    assert record.loops == ["stubborn"]
    release.set()
    await task


async def test_close_failure_does_not_keep_the_rest_open(caplog):
    closed = []

    class Resource:
        def __init__(self, name):
            self.name = name

        async def start(self):
            closed.append(f"started {self.name}")

        async def close(self):
            if self.name == "broken":
                raise OSError("already gone")
            closed.append(f"closed {self.name}")

    async with Daemon(signals=()) as daemon:
        assert (await daemon.open(Resource("ipr"))).name == "ipr"
        await daemon.open(Resource("broken"))
    assert closed == ["started ipr", "started broken", "closed ipr"]
    assert loop_records(caplog, "close failed")


async def test_duplicate_names_are_refused():
    async with Daemon(signals=()) as daemon:
        daemon.loop("probe", forever())
        with pytest.raises(ValueError, match="'probe' runs already"):
            daemon.loop("probe", forever())


async def test_loop_names():
    class Controller:
        async def _probe_loop(self, j):
            pass

        async def _route_loop(self):
            pass

    ctl = Controller()
    coros = [ctl._route_loop(), ctl._probe_loop(0), ctl._probe_loop(1)]
    try:
        assert list(loop_names(coros)) == ["Controller._route_loop", "Controller._probe_loop-0",
                                           "Controller._probe_loop-1"]
        assert list(loop_names({"receive": coros[0]})) == ["receive"]
    finally:
        for coro in coros:
            coro.close()


# --- a whole process: signals and exit codes --------------------------------------------

PROGRAM = textwrap.dedent(
    """
    import asyncio, sys
    from daemonkit.lifecycle import StartupError, run
    from daemonkit.logs import setup_logging

    async def forever():
        await asyncio.Event().wait()

    async def broken():
        await asyncio.sleep(0.05)
        raise RuntimeError("boom")

    async def main(daemon):
        daemon.on_close(lambda: print("closed", flush=True))
        if sys.argv[1] == "no-start":
            raise StartupError("cannot serve HTTP on port 8080: Address already in use")
        daemon.loop("receive", forever())
        if sys.argv[1] == "broken":
            daemon.loop("reconcile", broken())
        print("serving", flush=True)
        return await daemon.supervise()

    setup_logging("info")
    sys.exit(run("demo", main))
    """
)


def start(mode: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", PROGRAM, mode], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "PYTHONPATH": os.getcwd()})


def json_lines(stderr: str) -> list[dict]:
    return [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_exits_0_promptly(signum):
    proc = start("serve")
    assert proc.stdout.readline() == "serving\n"
    sent = time.monotonic()
    proc.send_signal(signum)
    stdout, stderr = proc.communicate(timeout=10)
    assert time.monotonic() - sent < 1.5
    assert proc.returncode == 0, stderr
    assert stdout == "closed\n"
    assert [entry["msg"] for entry in json_lines(stderr)] == ["stopping"]


def test_failed_loop_exits_1_naming_the_loop():
    proc = start("broken")
    stdout, stderr = proc.communicate(timeout=10)
    assert proc.returncode == 1
    assert stdout == "serving\nclosed\n"
    (failed,) = [entry for entry in json_lines(stderr) if entry["msg"] == "loop failed"]
    assert failed["loop"] == "reconcile" and "RuntimeError: boom" in failed["error"]


def test_startup_error_is_one_line_and_exit_1():
    proc = start("no-start")
    stdout, stderr = proc.communicate(timeout=10)
    assert proc.returncode == 1
    assert stdout == "closed\n"
    assert [line for line in stderr.splitlines() if not line.startswith("{")] == [
        "demo: cannot serve HTTP on port 8080: Address already in use"
    ]
