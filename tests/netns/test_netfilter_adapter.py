"""The netlink adapter's netfilter and policy-routing parts on a real kernel: fwmark rules,
all-or-nothing nf_tables transactions, conntrack by mark, SOCK_DESTROY's errors."""

from __future__ import annotations

import socket
from ipaddress import ip_address

import pytest

from netlink_adapter import AsyncIPRoute
from netlink_adapter import nft_expressions as x
from netlink_adapter.conntrack import Flow, all_flows, flows_with_mark, flush_mark
from netlink_adapter.errors import KernelFeatureMissing, NotFound
from netlink_adapter.nftables import Nftables
from netlink_adapter.rules import FwmarkRule, delete_fwmark_rule, dump_fwmark_rules, ensure_fwmark_rule
from netlink_adapter.sockdiag import destroy_sockets, sock_destroy_supported
from tests.netns import nsutil

MASK, MARK = 0x00F00000, 0x00100000


async def test_fwmark_rules_are_added_once_and_deleted_once(netns):
    async with AsyncIPRoute(netns=netns) as ipr:
        rules = [FwmarkRule(family, 1000, MARK, MASK, 100) for family in (socket.AF_INET, socket.AF_INET6)]
        assert [await ensure_fwmark_rule(ipr, rule) for rule in rules] == [True, True]
        assert [await ensure_fwmark_rule(ipr, rule) for rule in rules] == [False, False]
        assert await dump_fwmark_rules(ipr) == rules
        assert [await delete_fwmark_rule(ipr, rule) for rule in rules] == [True, True]
        assert [await delete_fwmark_rule(ipr, rule) for rule in rules] == [False, False]
        assert await dump_fwmark_rules(ipr) == []


async def test_an_nft_transaction_is_all_or_nothing(netns):
    async with Nftables(netns=netns) as nft:
        txn = nft.transaction("t")
        txn.add_table()
        txn.add_chain("c")
        txn.add_rule("c", [x.verdict(x.RETURN)], "fine")
        txn.add_rule("no-such-chain", [x.verdict(x.RETURN)], "refused")
        with pytest.raises(NotFound, match="add rule no-such-chain: refused"):
            await nft.commit(txn)
        assert "t" not in await nft.tables(), "nothing of the transaction was applied"

        txn = nft.transaction("t")
        txn.add_table()
        txn.add_chain("c")
        txn.add_rule("c", x.ct_mark_is(MASK, MARK) + [x.verdict(x.RETURN)], "first")
        txn.add_rule("c", [x.verdict(x.RETURN)], "second")
        await nft.commit(txn)
        assert [(r.chain, r.comment) for r in await nft.rules("t")] == [("c", "first"), ("c", "second")]
        txn = nft.transaction("t")
        txn.flush_chain("c")
        txn.add_rule("c", [x.verdict(x.RETURN)], "only")
        await nft.commit(txn)
        assert [r.comment for r in await nft.rules("t")] == ["only"]
        txn = nft.transaction("t")
        txn.delete_table()
        await nft.commit(txn)
        assert "t" not in await nft.tables()


async def test_conntrack_by_mark_covers_both_families(netns):
    async with Nftables(netns=netns) as nft:
        txn = nft.transaction("mark")
        txn.add_table()
        txn.add_chain("out", hook="output", priority=0, chain_type="filter")
        txn.add_rule("out", x.l4proto_is(socket.IPPROTO_UDP) + x.ct_mark_merge(MASK, MARK), "mark udp")
        await nft.commit(txn)
    for family, address in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
        sock = nsutil.ns_socket(netns, family, socket.SOCK_DGRAM)
        sock.sendto(b"x", (address, 9))
        sock.close()
    icmp = nsutil.run_in(netns, ["ping", "-c1", "-W1", "127.0.0.1"], check=False)  # tracked, not marked
    assert icmp.returncode == 0
    flows = await flows_with_mark(MARK, MASK, netns)
    assert {(f.family, f.proto, f.destination, f.destination_port) for f in flows} == {
        (socket.AF_INET, socket.IPPROTO_UDP, ip_address("127.0.0.1"), 9),
        (socket.AF_INET6, socket.IPPROTO_UDP, ip_address("::1"), 9),
    }
    assert await flows_with_mark(MARK << 1, MASK, netns) == []
    assert await flush_mark(MARK, MASK, netns) == flows, "what was flushed"
    assert await flows_with_mark(MARK, MASK, netns) == []
    assert {flow.proto for flow in await all_flows(netns)} == {socket.IPPROTO_ICMP}, "the unmarked entry stays"
    for mark_zero in (flows_with_mark, flush_mark):
        with pytest.raises(ValueError):
            await mark_zero(0, MASK, netns)


async def test_sock_destroy_on_a_kernel_without_it_is_a_missing_feature(netns):
    if await sock_destroy_supported(netns):
        pytest.skip("this kernel has SOCK_DESTROY; the error path needs one without (the UML kernel)")
    flow = Flow(socket.AF_INET, socket.IPPROTO_TCP, ip_address("127.0.0.1"), 1, ip_address("127.0.0.1"), 2)
    with pytest.raises(KernelFeatureMissing, match="CONFIG_INET_DIAG_DESTROY"):
        await destroy_sockets([flow], netns)
