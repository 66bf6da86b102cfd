"""The one netlink adapter of ``bonding``, both daemons and the tests' helpers.

Thin async functions over pyroute2's ``AsyncIPRoute`` (and its nf_tables,
conntrack and sock_diag sockets) that return plain values and raise the
domain errors of ``errors``:

- ``errors``: errno → ``NotFound`` / ``AlreadyExists`` / ``KernelFeatureMissing`` /
  ``EventsLost``; ``KERNEL_ERRORS``, the tuple callers catch.
- ``links``: lookups, ``LinkFacts``, deletes, kernel features, taps, ``Ensured``.
- ``bond``, ``ip6tnl``, ``addresses``: the devices and addresses of the bond network.
- ``routes``: ``RouteFacts`` dumps, replace (unreachable too), idempotent delete, in any table.
- ``rules``: policy-routing rules ``fwmark/mask lookup table``: typed dump, idempotent add and delete.
- ``nftables``, ``nft_expressions``: one table's changes as one atomic nf_tables transaction; the
  expressions and matches its rules are made of.
- ``conntrack``: entries by ct mark (both families), flushed in one request.
- ``sockdiag``: SOCK_DESTROY of local sockets by their addresses.
- ``events``: ``EventStream``, typed link and route events behind a fixed-header pre-filter.
- ``headers``: those fixed headers, read without pyroute2's decoder.

``AsyncIPRoute`` is re-exported so callers need no pyroute2 import to open a handle.
"""

from pyroute2 import AsyncIPRoute

# Registers the bond attributes pyroute2 lacks before anything parses a link message.
from netlink_adapter import bond as _bond  # noqa: F401

__all__ = ["AsyncIPRoute"]
