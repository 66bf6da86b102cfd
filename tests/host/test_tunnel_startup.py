"""tunnel-controller start-up failures and signals, on the host (no bond0 here)."""

import os
import signal
import socket
import subprocess
import sys
import time


def start(stderr=subprocess.PIPE, **env) -> subprocess.Popen:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("HA_", "VPN_", "WATCHDOG_", "HTTP_"))}
    clean.update({k: str(v) for k, v in env.items()})
    return subprocess.Popen(
        [sys.executable, "-m", "tunnel_controller"], env=clean, stdout=subprocess.PIPE, stderr=stderr, text=True
    )


def plain_lines(stderr: str) -> list[str]:
    """What an operator reads: the lines that are not JSON log entries."""
    return [line for line in stderr.splitlines() if not line.startswith("{")]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_no_bond_address_is_one_line_and_exit_1():
    proc = start(LISTEN_TIMEOUT="500ms", HTTP_PORT=free_port())
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 1
    assert plain_lines(stderr) == ["tunnel-controller: no usable bond0 address after 0.5 s: bond0 does not exist"]


def test_http_port_taken_is_one_line_and_exit_1():
    with socket.socket() as taken:
        taken.bind(("", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = start(HTTP_PORT=port)
        _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 1
    (line,) = plain_lines(stderr)
    assert line.startswith(f"tunnel-controller: cannot serve HTTP on port {port}: ")


def test_sigterm_while_waiting_for_bond0_exits_0_at_once(tmp_path):
    log = tmp_path / "stderr"
    with open(log, "w") as stderr:
        proc = start(LISTEN_TIMEOUT="60s", HTTP_PORT=free_port(), stderr=stderr)
    deadline = time.monotonic() + 30
    while "waiting for the bond0 address" not in log.read_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=10)
    assert proc.returncode == 0
    assert time.monotonic() - sent < 3.0
