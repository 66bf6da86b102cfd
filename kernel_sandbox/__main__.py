"""Command line: ``python -m kernel_sandbox [options] -- command [args...]``.

Exit status: the command's own; 124 when the guest was killed after the
deadline; 123 when the guest ended without reporting one; 125 when the
sandbox cannot start here (the message says what is missing).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from kernel_sandbox.runner import EXIT_UNAVAILABLE, Sandbox, SandboxUnavailable


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m kernel_sandbox",
        description="Run a command as the only workload of a User-Mode Linux guest "
        "(real Linux 6.1 kernel with bonding, ip6tnl, netem). The guest sees the host's / read-only "
        "and the --mount directories (default: the current directory) read-write.",
    )
    parser.add_argument("--timeout", type=float, default=1200, help="seconds before the guest is killed (default 1200)")
    parser.add_argument("--mem", default="2G", help="guest memory (default 2G)")
    parser.add_argument(
        "--mount", action="append", type=Path, default=[], help="host directory to mount read-write (repeatable)"
    )
    parser.add_argument(
        "--modules-dir",
        type=Path,
        help="kernel module tree (<dir>/<release>/modules.dep; default: $SANDBOX_MODULES_DIR, else the tree "
        "scripts/install built with nftables for inet/ip/ip6, else /usr/lib/uml/modules)",
    )
    parser.add_argument("command", nargs=argparse.REMAINDER, help="command and arguments (after --)")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command given")
    sandbox = Sandbox(
        mounts=args.mount or [Path.cwd()], timeout=args.timeout, mem=args.mem, modules_dir=args.modules_dir
    )
    try:
        result = sandbox.run(command)
    except SandboxUnavailable as exc:
        print(f"kernel sandbox cannot start: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    if result.problem:
        print(f"kernel sandbox: {result.problem}", file=sys.stderr)
    return result.returncode


if __name__ == "__main__":
    sys.exit(main())
