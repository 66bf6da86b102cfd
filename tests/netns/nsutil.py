"""Helpers for kernel-level tests: named network namespaces, processes in
them, waiting for conditions with deadlines, and leak snapshots."""

from __future__ import annotations

import asyncio
import os
import secrets
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families
from pyroute2 import netns as pr_netns

REPO = Path(__file__).resolve().parents[2]
PYTHON = sys.executable
NETNS_DIR = Path("/run/netns")

# Defaults every test namespace gets: no DAD (addresses usable at once),
# unprivileged ICMP echo sockets for every group.
NS_SYSCTLS = {
    "net.ipv6.conf.all.accept_dad": "0",
    "net.ipv6.conf.default.accept_dad": "0",
    "net.ipv4.ping_group_range": "0 2147483647",
}


def netns_names() -> set[str]:
    return set(os.listdir(NETNS_DIR)) if NETNS_DIR.is_dir() else set()


def sysctl_cmd(values: dict[str, str]) -> list[str]:
    return ["sysctl", "-q", "-w", *(f"{k}={v}" for k, v in values.items())]


def ns_exec(ns: str, argv: Sequence[str]) -> list[str]:
    return ["ip", "netns", "exec", ns, *argv]


def run_in(ns: str, argv: Sequence[str], *, check: bool = True, env: dict | None = None, timeout: float = 60):
    return subprocess.run(
        ns_exec(ns, argv), check=check, capture_output=True, text=True, env=env, timeout=timeout
    )


def sysctl_get(ns: str, name: str) -> str:
    return " ".join(run_in(ns, ["sysctl", "-n", name]).stdout.split())


def create_netns(prefix: str = "t") -> str:
    name = f"{prefix}-{secrets.token_hex(3)}"
    pr_netns.create(name)
    run_in(name, ["sh", "-c", f"{shlex.join(sysctl_cmd(NS_SYSCTLS))} && ip link set lo up"])
    return name


def kill_netns_processes(ns: str) -> list[int]:
    """SIGKILL every process in ``ns``; the pids killed."""
    result = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True)
    pids = [int(p) for p in result.stdout.split()]
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return pids


def delete_netns(ns: str) -> None:
    kill_netns_processes(ns)
    try:
        pr_netns.remove(ns)
    except FileNotFoundError:
        pass


def daemon_env(**values: object) -> dict[str, str]:
    """Environment for a daemon under test: this interpreter's, plus ``values``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("POD_", "SHOOT_", "SEED_", "VPN_", "HA_"))}
    env["PYTHONUNBUFFERED"] = "1"
    env.update({k: str(v) for k, v in values.items()})
    return env


@dataclass
class Process:
    """A process started in a namespace by a test; output captured to a file."""

    popen: subprocess.Popen
    log_path: Path
    argv: list[str] = field(default_factory=list)

    def output(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
        if self.popen.poll() is None:
            self.popen.send_signal(sig)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout)
        return self.popen.returncode


# Namespaces and processes owned by fixtures broader than one test (a module's
# topology): the per-test leak check leaves them to their owner.
LONG_LIVED_NAMESPACES: set[str] = set()
LONG_LIVED_PIDS: set[int] = set()


class ProcessGroup:
    """Processes started by one test (or, ``long_lived``, one module); all are killed at teardown."""

    def __init__(self, log_dir: Path, long_lived: bool = False):
        self.log_dir = log_dir
        self.long_lived = long_lived
        self.processes: list[Process] = []

    def start(self, ns: str | None, argv: Sequence[str], env: dict[str, str] | None = None, name: str = "proc"):
        log_path = self.log_dir / f"{name}-{len(self.processes)}.log"
        log = open(log_path, "wb")
        full = ns_exec(ns, argv) if ns else list(argv)
        popen = subprocess.Popen(full, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO)
        log.close()
        proc = Process(popen, log_path, full)
        self.processes.append(proc)
        if self.long_lived:
            LONG_LIVED_PIDS.add(popen.pid)
        return proc

    def kill_all(self) -> None:
        for proc in self.processes:
            if proc.popen.poll() is None:
                proc.popen.kill()
                try:
                    proc.popen.wait(10)
                except subprocess.TimeoutExpired:
                    pass
            LONG_LIVED_PIDS.discard(proc.popen.pid)


async def wait_for(
    condition: Callable[[], Awaitable[object] | object],
    *,
    timeout: float = 10.0,
    interval: float = 0.05,
    message: str = "condition",
):
    """Poll ``condition`` until it returns a truthy value; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while True:
        try:
            value = condition()
            if asyncio.iscoroutine(value) or isinstance(value, Awaitable):
                value = await value
            if value:
                return value
        except Exception as exc:  # keep polling; report the last error on timeout
            last_error = exc
        if time.monotonic() >= deadline:
            detail = f" (last error: {last_error!r})" if last_error else ""
            raise AssertionError(f"timed out after {timeout:.1f} s waiting for {message}{detail}")
        await asyncio.sleep(interval)


# --- leak snapshots ------------------------------------------------------


def _descendants(root: int) -> dict[int, str]:
    """Live, non-zombie descendants of ``root``: pid -> command line."""
    children: dict[int, list[int]] = {}
    info: dict[int, tuple[str, str]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        state, ppid = fields[0], int(fields[1])
        children.setdefault(ppid, []).append(int(entry))
        info[int(entry)] = (state, cmdline.strip())
    result, stack = {}, list(children.get(root, []))
    while stack:
        pid = stack.pop()
        state, cmdline = info.get(pid, ("?", ""))
        if state != "Z":
            result[pid] = cmdline
        stack.extend(children.get(pid, []))
    return result


def root_links() -> set[str]:
    return set(os.listdir("/sys/class/net"))


@dataclass
class Snapshot:
    namespaces: set[str]
    links: set[str]
    processes: dict[int, str]
    tmp: set[str]

    @classmethod
    def take(cls) -> Snapshot:
        # pytest's own tmp_path directories are managed (and pruned) by pytest.
        tmp = {name for name in os.listdir("/tmp") if not name.startswith("pytest-of-")}
        return cls(netns_names(), root_links(), _descendants(os.getpid()), tmp)

    def leaks_since(self, before: Snapshot) -> list[str]:
        leaks = []
        if extra := self.namespaces - before.namespaces - LONG_LIVED_NAMESPACES:
            leaks.append(f"namespaces {sorted(extra)}")
        if extra := self.links - before.links:
            leaks.append(f"devices in the root namespace {sorted(extra)}")
        new = {p: c for p, c in self.processes.items() if p not in before.processes}
        if extra := {p: c for p, c in new.items() if p not in LONG_LIVED_PIDS}:
            leaks.append(f"processes {extra}")
        if extra := self.tmp - before.tmp:
            leaks.append(f"files in /tmp {sorted(extra)}")
        return leaks


# --- sockets inside a namespace (created there, used from the test process) ---


def ns_socket(ns: str, family: int, kind: int, proto: int = 0) -> socket.socket:
    """A socket living in namespace ``ns``; the calling thread stays where it is.

    setns(2) moves only the calling thread, so a short-lived thread enters ``ns``,
    creates the socket and ends. pyroute2's create_socket forks a helper process
    instead, which from a threaded test process failed after a few thousand calls
    ("could not start netns socket within timeout").
    """
    result: list = []

    def enter_and_create() -> None:
        try:
            pr_netns.setns(ns, flags=0, fork=False)
            result.append(socket.socket(family, kind, proto))
        except BaseException as error:  # handed to the caller below
            result.append(error)

    thread = threading.Thread(target=enter_and_create, name=f"ns-socket-{ns}")
    thread.start()
    thread.join()
    if isinstance(result[0], BaseException):
        raise result[0]
    return result[0]


def http_get(ns: str, port: int, path: str, host: str = "127.0.0.1", timeout: float = 5.0) -> tuple[int, str]:
    """GET ``path`` from a server listening inside ``ns``; (status, body)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = ns_socket(ns, family, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.connect((host, port))
        sock.sendall(f"GET {path} HTTP/1.0\r\nHost: test\r\n\r\n".encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    finally:
        sock.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body.decode(errors="replace")


async def http_get_async(ns: str, port: int, path: str, **kwargs) -> tuple[int, str]:
    return await asyncio.to_thread(http_get, ns, port, path, **kwargs)


def metric_samples(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    """(labels, value) of every sample called ``name`` in a /metrics body."""
    return [
        (sample.labels, sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    ]


def metric_value(text: str, name: str, **labels: str) -> float:
    """The value of the sample ``name`` with exactly ``labels`` (in any order).

    A sample that is not there fails the test: a renamed metric or label value
    must not read as 0 (the daemons export every known label value from the start).
    """
    samples = metric_samples(text, name)
    for sample_labels, value in samples:
        if sample_labels == labels:
            return value
    exported = sorted(str(sample_labels) for sample_labels, _ in samples)
    raise AssertionError(
        f"no metric {name} with labels {labels}; exported under that name: {exported or 'nothing'}"
    )
