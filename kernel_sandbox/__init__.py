"""A real Linux kernel (User-Mode Linux) for the project's kernel-level tests.

The development and CI machines run a kernel without bonding, ip6tnl and
netem and cannot load modules; UML boots a full 6.1 kernel as an ordinary
process in about two seconds. See ``python -m kernel_sandbox --help``.
"""

from kernel_sandbox.runner import Sandbox, SandboxResult, SandboxUnavailable

__all__ = ["Sandbox", "SandboxResult", "SandboxUnavailable"]
