"""Which kernel module tree the guest loads its modules from.

Debian's UML modules (``/usr/lib/uml/modules/<release>``) lack nftables for
inet, ip and ip6; ``build-modules.sh`` (run by ``scripts/install``) builds a
tree that has them in a cache outside the repository, named after the kernel
release and a hash of the recipe. The guest uses, in this order: the tree
given (``--modules-dir`` / ``SANDBOX_MODULES_DIR``), the built tree of this
recipe if it is complete, Debian's.

A tree is laid out like ``/usr/lib/uml/modules``: ``<dir>/<release>/modules.dep``.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

STOCK_MODULES = Path("/usr/lib/uml/modules")
BUILD_SCRIPT = Path(__file__).with_name("build-modules.sh")
DEFAULT_CACHE = Path("/var/cache/ha-vpn-dataplane")
MODULES_DIR_VARIABLE = "SANDBOX_MODULES_DIR"


def releases(modules_dir: Path = STOCK_MODULES) -> list[str]:
    """Kernel releases ``modules_dir`` has modules for (Debian ships one)."""
    if not modules_dir.is_dir():
        return []
    return sorted(entry.name for entry in modules_dir.iterdir() if (entry / "modules.dep").is_file())


def built_tree(release: str) -> Path:
    """Where ``build-modules.sh`` puts (or has put) the tree for ``release``; the same name it computes."""
    cache = Path(os.environ.get("HAVPN_CACHE_DIR", DEFAULT_CACHE))
    recipe = hashlib.sha256(BUILD_SCRIPT.read_bytes()).hexdigest()[:12]
    return cache / f"uml-modules-{release}-{recipe}"


def is_complete(tree: Path) -> bool:
    return (tree / ".complete").is_file()


def default_modules_dir(release: str) -> Path:
    """``SANDBOX_MODULES_DIR`` if set, else the built tree if complete, else Debian's modules."""
    if chosen := os.environ.get(MODULES_DIR_VARIABLE):
        return Path(chosen)
    tree = built_tree(release)
    return tree if is_complete(tree) else STOCK_MODULES
