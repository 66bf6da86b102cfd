"""Run a command as the only workload of a User-Mode Linux guest.

The guest is a real Linux 6.1 kernel running as an ordinary host process
(Debian's ``user-mode-linux``); its root file system is the host's ``/``,
read-only, and the directories named in ``mounts`` are mounted read-write at
the same paths. The command's environment, working directory, output and exit
status are carried across; a guest that does not finish in time is killed and
reported as a failure.
"""

from __future__ import annotations

import os
import re
import selectors
import shlex
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from kernel_sandbox.modules import MODULES_DIR_VARIABLE, STOCK_MODULES, default_modules_dir, releases

UML_BINARY = "linux.uml"
INIT_SCRIPT = Path(__file__).with_name("init.sh")

# Modules the project's kernel tests need. bonding and dummy would otherwise
# create a bond0/dummy0 in the guest's initial namespace on load.
DEFAULT_MODULES = (
    "bonding,max_bonds=0",
    "dummy,numdummies=0",
    "ip6_tunnel",
    "tun",
    "veth",
    "bridge",
    "sch_netem",
    "ifb,numifbs=0",
    "sch_ingress",
    "act_mirred",
    "cls_matchall",
    "iptable_filter",
    "iptable_nat",
    "iptable_mangle",
    "ip6table_filter",
    "ip6table_nat",
    "ip6table_mangle",
    "xt_MASQUERADE",
    "xt_conntrack",
    "xt_state",
    "xt_tcpudp",
    "xt_TCPMSS",
    "xt_NETMAP",
    "xt_owner",
    # Connection pinning (nf_tables inet, ct mark, reject, spread) and iptables-nft: the guest
    # cannot autoload (its modprobe path has no modules), so everything is loaded up front.
    "nf_tables",
    "nft_ct",
    "nft_reject_inet",
    "nft_numgen",
    "nft_hash",
    "nft_compat",
    "nft_chain_nat",
    "nf_conntrack_netlink",
)

# Lines the guest kernel prints while powering off; they are not the command's.
_KERNEL_NOISE = re.compile(rb"^(sysrq: Power Off|reboot: (Power down|System halted))\s*$")

# Exit statuses the runner reports for failures of the sandbox itself.
EXIT_UNAVAILABLE = 125
EXIT_TIMEOUT = 124
EXIT_NO_STATUS = 123

# Variables that describe the host shell, not the command.
_ENV_SKIP = {"_", "SHLVL", "PWD", "OLDPWD", "TERM", "COLUMNS", "LINES", "TERMCAP"}


class SandboxUnavailable(RuntimeError):
    """The sandbox cannot start on this machine (the message says why)."""


@dataclass
class SandboxResult:
    returncode: int
    timed_out: bool = False
    duration: float = 0.0
    problem: str | None = None


@dataclass
class Sandbox:
    """Settings of one guest boot."""

    mounts: Sequence[Path]
    timeout: float = 1200.0
    mem: str = "2G"
    modules: Sequence[str] = DEFAULT_MODULES
    modules_dir: Path | None = None  # None: kernel_sandbox.modules.default_modules_dir
    state_dir: Path | None = None
    env_skip: set[str] = field(default_factory=lambda: set(_ENV_SKIP))

    def check(self) -> tuple[str, Path]:
        """Return (uml binary, module tree) or raise SandboxUnavailable."""
        binary = shutil.which(UML_BINARY) or shutil.which(UML_BINARY, path="/usr/bin")
        if not binary:
            raise SandboxUnavailable(
                f"{UML_BINARY} not found: install the Debian package user-mode-linux "
                "(apt-get install user-mode-linux kmod)"
            )
        if not shutil.which("modprobe", path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin"):
            raise SandboxUnavailable("modprobe not found: install the Debian package kmod")
        stock = releases(STOCK_MODULES)
        if not stock:
            raise SandboxUnavailable(f"no UML kernel modules under {STOCK_MODULES}")
        release = stock[-1]
        modules_dir = (self.modules_dir or default_modules_dir(release)).resolve()
        if release not in releases(modules_dir):
            raise SandboxUnavailable(f"module tree {modules_dir} has no modules for the UML kernel {release}")
        for mount in [*self.mounts, modules_dir]:
            if re.search(r"[\s:,]", str(mount)):
                raise SandboxUnavailable(f"cannot pass {mount} to the guest (no spaces, ':' or ',')")
        return binary, modules_dir

    def run(
        self,
        argv: Sequence[str],
        *,
        cwd: Path | None = None,
        env: Mapping[str, str] | None = None,
        output=None,
    ) -> SandboxResult:
        """Boot a guest, run ``argv`` in it, stream its output, return its status."""
        binary, modules_dir = self.check()
        output = output if output is not None else sys.stdout.buffer
        cwd = Path(cwd or os.getcwd()).resolve()
        mounts = [Path(m).resolve() for m in self.mounts]
        state_root = (self.state_dir or mounts[0] / ".sandbox").resolve()
        if not any(state_root == m or m in state_root.parents for m in mounts):
            raise SandboxUnavailable(f"state directory {state_root} is not inside a mounted directory")
        run_dir = state_root / uuid.uuid4().hex[:12]
        run_dir.mkdir(parents=True)
        try:
            self._write_command(run_dir, argv, cwd, os.environ if env is None else env)
            cmdline = [
                binary,
                f"mem={self.mem}",
                f"uml_dir={run_dir / 'uml'}",
                "root=/dev/root",
                "rootfstype=hostfs",
                "rootflags=/",
                "ro",
                f"init={INIT_SCRIPT.resolve()}",
                "con=null",
                "con0=fd:0,fd:1",
                "quiet",
                "loglevel=2",
                f"SANDBOX_DIR={run_dir}",
                f"SANDBOX_MOUNTS={':'.join(map(str, mounts))}",
                f"SANDBOX_MODULES={':'.join(self.modules)}",
                f"{MODULES_DIR_VARIABLE}={modules_dir}",
            ]
            (run_dir / "uml").mkdir()
            return self._boot(cmdline, run_dir, output)
        finally:
            shutil.rmtree(run_dir, ignore_errors=True)
            try:
                state_root.rmdir()
            except OSError:
                pass

    def _write_command(self, run_dir: Path, argv: Sequence[str], cwd: Path, env: Mapping[str, str]) -> None:
        lines = ["#!/bin/sh"]
        for name, value in sorted(env.items()):
            if name in self.env_skip or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
                continue
            lines.append(f"export {name}={shlex.quote(value)}")
        lines.append("export SANDBOX_KERNEL=uml")
        lines.append(f"cd {shlex.quote(str(cwd))} || exit 126")
        lines.append(shlex.join(argv))
        (run_dir / "cmd.sh").write_text("\n".join(lines) + "\n")

    def _boot(self, cmdline: list[str], run_dir: Path, output) -> SandboxResult:
        started = time.monotonic()
        proc = subprocess.Popen(
            cmdline,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        timed_out = False
        try:
            timed_out = not _pump(proc, output, started + self.timeout)
        except BaseException:
            _kill_group(proc)
            raise
        if timed_out:
            _kill_group(proc)
        else:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                _kill_group(proc)
        _kill_group(proc)  # UML's helper processes, should any linger
        duration = time.monotonic() - started
        if timed_out:
            return SandboxResult(
                EXIT_TIMEOUT, True, duration, f"guest did not finish within {self.timeout:.0f} s and was killed"
            )
        rc_file = run_dir / "rc"
        try:
            return SandboxResult(int(rc_file.read_text().strip()), False, duration)
        except (OSError, ValueError):
            return SandboxResult(
                EXIT_NO_STATUS,
                False,
                duration,
                f"guest ended without an exit status (kernel exit code {proc.returncode}); it crashed or failed to boot",
            )


def _pump(proc: subprocess.Popen, output, deadline: float) -> bool:
    """Copy the guest's console to ``output`` until EOF; False on timeout."""
    assert proc.stdout is not None
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    fd = proc.stdout.fileno()
    pending = b""
    try:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            if not sel.select(timeout=min(remaining, 1.0)):
                continue
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                if not _KERNEL_NOISE.match(line):
                    output.write(line + b"\n")
            output.flush()
        if pending and not _KERNEL_NOISE.match(pending):
            output.write(pending)
            output.flush()
        return True
    finally:
        sel.close()


def _kill_group(proc: subprocess.Popen) -> None:
    """Kill the guest and every host process UML forked, and wait until they are gone."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
