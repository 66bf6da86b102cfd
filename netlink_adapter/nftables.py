"""nf_tables: one table's changes as one atomic transaction, and typed dumps.

pyroute2's ``AsyncNFTables`` sends every ``table()``/``chain()``/``rule()``
call as a transaction of its own; a ``Transaction`` here collects messages
(tables, chains, rules, flushes, maps and their elements) and ``commit``
sends them in one batch: the kernel applies all of them or none, and packets
see either the old or the new ruleset, never a mix. Every message asks for an
acknowledgement, so the error names the message that failed.
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass, field

from pyroute2.netlink import NLM_F_ACK, NLM_F_APPEND, NLM_F_CREATE, NLM_F_REQUEST
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.nfnetlink import NFNL_SUBSYS_NFTABLES, nfgen_msg
from pyroute2.netlink.nfnetlink.nftsocket import (
    NFT_MSG_DELCHAIN,
    NFT_MSG_DELRULE,
    NFT_MSG_DELSETELEM,
    NFT_MSG_DELTABLE,
    NFT_MSG_NEWCHAIN,
    NFT_MSG_NEWRULE,
    NFT_MSG_NEWSET,
    NFT_MSG_NEWSETELEM,
    NFT_MSG_NEWTABLE,
    nft_chain_msg,
    nft_rule_msg,
    nft_set_elem_list_msg,
    nft_set_msg,
    nft_table_msg,
)
from pyroute2.netlink.nlsocket import NetlinkRequest
from pyroute2.nftables.main import AsyncNFTables

from netlink_adapter.errors import KernelError, KernelFeatureMissing, domain_error, translated
from netlink_adapter.nft_expressions import Rule, u32

NFPROTO_INET = 1
NFNL_MSG_BATCH_BEGIN, NFNL_MSG_BATCH_END = 0x10, 0x11
HOOKS = {"prerouting": 0, "input": 1, "forward": 2, "output": 3, "postrouting": 4}
# nft's own numbers for the types and byte order of map keys and data (they only matter to `nft list`).
TYPE_INTEGER, TYPE_MARK = 4, 19
BYTEORDER_HOST = 1


@dataclass
class Transaction:
    """The messages of one nf_tables transaction for ``table`` (see ``Nftables.commit``)."""

    table: str
    family: int = NFPROTO_INET
    messages: list = field(default_factory=list)
    descriptions: list[str] = field(default_factory=list)

    def _add(self, msg_class, command: int, flags: int, attrs: list, description: str) -> None:
        msg = msg_class()
        msg["attrs"] = attrs
        msg["nfgen_family"] = self.family
        msg["header"]["type"] = (NFNL_SUBSYS_NFTABLES << 8) | command
        msg["header"]["flags"] = NLM_F_REQUEST | NLM_F_ACK | flags
        self.messages.append(msg)
        self.descriptions.append(description)

    def add_table(self) -> None:
        """Create the table (no-op if it exists)."""
        attrs = [("NFTA_TABLE_NAME", self.table)]
        self._add(nft_table_msg, NFT_MSG_NEWTABLE, NLM_F_CREATE, attrs, f"add table {self.table}")

    def delete_table(self) -> None:
        self._add(nft_table_msg, NFT_MSG_DELTABLE, 0, [("NFTA_TABLE_NAME", self.table)], f"delete table {self.table}")

    def add_chain(self, name: str, *, hook: str | None = None, priority: int = 0, chain_type: str = "filter") -> None:
        """Create a chain (no-op if it exists); with ``hook``, a base chain of ``chain_type`` at ``priority``."""
        attrs = [("NFTA_CHAIN_TABLE", self.table), ("NFTA_CHAIN_NAME", name)]
        if hook is not None:
            attrs += [
                ("NFTA_CHAIN_HOOK", {"attrs": [("NFTA_HOOK_HOOKNUM", HOOKS[hook]), ("NFTA_HOOK_PRIORITY", priority)]}),
                ("NFTA_CHAIN_TYPE", chain_type),
            ]
        kind = f"{chain_type} chain at {hook} priority {priority}" if hook else "chain"
        self._add(nft_chain_msg, NFT_MSG_NEWCHAIN, NLM_F_CREATE, attrs, f"add {kind} {self.table}/{name}")

    def delete_chain(self, name: str) -> None:
        """Delete an empty chain (flush it first in the same transaction)."""
        attrs = [("NFTA_CHAIN_TABLE", self.table), ("NFTA_CHAIN_NAME", name)]
        self._add(nft_chain_msg, NFT_MSG_DELCHAIN, 0, attrs, f"delete chain {self.table}/{name}")

    def flush_chain(self, chain: str) -> None:
        """Delete every rule of ``chain``."""
        attrs = [("NFTA_RULE_TABLE", self.table), ("NFTA_RULE_CHAIN", chain)]
        self._add(nft_rule_msg, NFT_MSG_DELRULE, 0, attrs, f"flush chain {self.table}/{chain}")

    def add_rule(self, chain: str, rule: Rule, comment: str) -> None:
        """Append ``rule`` to ``chain``; ``comment`` names it (``nft list`` shows it, ``Nftables.rules`` returns it)."""
        attrs = [
            ("NFTA_RULE_TABLE", self.table),
            ("NFTA_RULE_CHAIN", chain),
            ("NFTA_RULE_EXPRESSIONS", rule),
            ("NFTA_RULE_USERDATA", {"value": comment}),
        ]
        self._add(nft_rule_msg, NFT_MSG_NEWRULE, NLM_F_CREATE | NLM_F_APPEND, attrs, f"add rule {chain}: {comment}")

    def add_map(self, name: str, set_id: int = 1) -> None:
        """Create a map from 32-bit integers to 32-bit marks (no-op if it exists)."""
        attrs = [
            ("NFTA_SET_TABLE", self.table),
            ("NFTA_SET_NAME", name),
            ("NFTA_SET_FLAGS", {"NFT_SET_MAP"}),
            ("NFTA_SET_KEY_TYPE", TYPE_INTEGER),
            ("NFTA_SET_KEY_LEN", 4),
            ("NFTA_SET_DATA_TYPE", TYPE_MARK),
            ("NFTA_SET_DATA_LEN", 4),
            ("NFTA_SET_ID", set_id),
            # For `nft list` only: keys and values are host-order registers (as numgen and ct mark use them).
            ("NFTA_SET_USERDATA", [("NFTNL_UDATA_SET_KEYBYTEORDER", u32(BYTEORDER_HOST)),
                                   ("NFTNL_UDATA_SET_DATABYTEORDER", u32(BYTEORDER_HOST))]),
        ]  # fmt: skip
        self._add(nft_set_msg, NFT_MSG_NEWSET, NLM_F_CREATE, attrs, f"add map {self.table}/{name}")

    def flush_map(self, name: str) -> None:
        """Delete every element of map ``name``."""
        attrs = [("NFTA_SET_ELEM_LIST_TABLE", self.table), ("NFTA_SET_ELEM_LIST_SET", name)]
        self._add(nft_set_elem_list_msg, NFT_MSG_DELSETELEM, 0, attrs, f"flush map {self.table}/{name}")

    def add_map_elements(self, name: str, elements: dict[bytes, bytes]) -> None:
        """Add ``key: value`` elements (register bytes) to map ``name``."""
        if not elements:
            return
        listed = [
            {
                "attrs": [
                    ("NFTA_SET_ELEM_KEY", {"attrs": [("NFTA_DATA_VALUE", key)]}),
                    ("NFTA_SET_ELEM_DATA", {"attrs": [("NFTA_DATA_VALUE", value)]}),
                ]
            }
            for key, value in elements.items()
        ]
        attrs = [
            ("NFTA_SET_ELEM_LIST_TABLE", self.table),
            ("NFTA_SET_ELEM_LIST_SET", name),
            ("NFTA_SET_ELEM_LIST_ELEMENTS", listed),
        ]
        description = f"add {len(listed)} elements to {name}"
        self._add(nft_set_elem_list_msg, NFT_MSG_NEWSETELEM, NLM_F_CREATE, attrs, description)


@dataclass(frozen=True)
class ChainFacts:
    name: str
    hook: int | None  # NF_INET_* hook number; None for a regular chain
    priority: int | None
    chain_type: str | None


@dataclass(frozen=True)
class RuleFacts:
    chain: str
    handle: int
    comment: str | None


class Nftables:
    """An nf_tables socket for one family (inet by default), in ``netns`` if given."""

    def __init__(self, netns: str | None = None, family: int = NFPROTO_INET):
        self.family = family
        self.socket = AsyncNFTables(nfgen_family=family)
        if netns is not None:
            self.socket.spec["netns"] = netns  # AsyncNFTables takes no netns argument; its spec does

    async def __aenter__(self) -> Nftables:
        return self

    async def __aexit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.socket.close()

    def transaction(self, table: str) -> Transaction:
        return Transaction(table, self.family)

    async def commit(self, transaction: Transaction) -> None:
        """Send ``transaction`` as one batch; raise the error of the first message the kernel refused.

        EOPNOTSUPP becomes ``KernelFeatureMissing`` naming the message (a
        family or expression this kernel was built without); other errnos
        become the adapter's domain errors with the message named.
        """
        if not transaction.messages:
            return
        sock = self.socket
        begin, end = nfgen_msg(), nfgen_msg()
        for msg, kind in ((begin, NFNL_MSG_BATCH_BEGIN), (end, NFNL_MSG_BATCH_END)):
            msg["res_id"] = NFNL_SUBSYS_NFTABLES
            msg["header"]["type"] = kind
            msg["header"]["flags"] = NLM_F_REQUEST
        requests = []
        data = b""
        for msg in (begin, *transaction.messages, end):
            request = NetlinkRequest(sock, msg)
            await request.prepare()
            data += request.msg.data
            requests.append(request)
        for request in (requests[0], requests[-1]):
            request.cleanup()  # no answer to BEGIN and END
        sock.send(data)
        # Read every answer (the kernel acknowledges each message even when it aborts the
        # batch), so none is left queued on the socket; the first error explains the rest.
        failure = None
        for request, description in zip(requests[1:-1], transaction.descriptions):
            try:
                async for _ in request.response():
                    pass
            except NetlinkError as exc:
                failure = failure or _named_error(exc, description)
        if failure is not None:
            raise failure

    @translated
    async def tables(self) -> list[str]:
        return [msg.get_attr("NFTA_TABLE_NAME") async for msg in await self.socket.get_tables()]

    @translated
    async def chains(self, table: str) -> list[ChainFacts]:
        found = []
        async for msg in await self.socket.get_chains():
            if msg.get_attr("NFTA_CHAIN_TABLE") != table:
                continue
            hook = msg.get_attr("NFTA_CHAIN_HOOK")
            found.append(
                ChainFacts(
                    name=msg.get_attr("NFTA_CHAIN_NAME"),
                    hook=hook.get_attr("NFTA_HOOK_HOOKNUM") if hook else None,
                    priority=hook.get_attr("NFTA_HOOK_PRIORITY") if hook else None,
                    chain_type=msg.get_attr("NFTA_CHAIN_TYPE"),
                )
            )
        return found

    @translated
    async def rules(self, table: str) -> list[RuleFacts]:
        """The rules of ``table`` in chain order, with the comments ``add_rule`` gave them."""
        found = []
        async for msg in await self.socket.get_rules():
            if msg.get_attr("NFTA_RULE_TABLE") != table:
                continue
            comment = msg.get_attr("NFTA_RULE_USERDATA")  # decoded to the string
            found.append(RuleFacts(msg.get_attr("NFTA_RULE_CHAIN"), msg.get_attr("NFTA_RULE_HANDLE"), comment))
        return found


def _named_error(exc: NetlinkError, description: str) -> KernelError:
    if exc.code == errno.EOPNOTSUPP:
        return KernelFeatureMissing(f"{description}: not supported by this kernel")
    return domain_error(NetlinkError(exc.code, f"{description}: {os.strerror(exc.code)}"))
