"""nftables expressions as pyroute2 sends them, and the matches built from them.

pyroute2 has builders for a handful of expressions only; the rest come from
its generic ``genex(name, {key: value})``, which names each attribute
``NFTA_<NAME>_<KEY>`` after its nla maps. A rule is a list of expressions,
evaluated left to right on register 1 (``REG``); a match that fails ends the
rule. Values in registers are in host byte order for ct/meta marks and ct
state, in network order for packet bytes (addresses).
"""

from __future__ import annotations

import struct
from ipaddress import IPv4Network, IPv6Network

from pyroute2.nftables.expressions import genex

Expression = dict
Rule = list[Expression]

REG = 1  # NFT_REG_1: 16 bytes, enough for an IPv6 address
VERDICT_REG = 0

# include/uapi/linux/netfilter/nf_tables.h
CT_STATE, CT_DIRECTION, CT_MARK = 0, 1, 3
META_MARK, META_NFPROTO, META_L4PROTO = 3, 15, 16
CMP_EQ, CMP_NEQ = 0, 1
ACCEPT, RETURN, JUMP = 1, -5, -3
PAYLOAD_NETWORK_HEADER = 1
NUMGEN_RANDOM = 1
REJECT_TCP_RST, REJECT_ICMPX_UNREACH = 1, 2
ICMPX_ADMIN_PROHIBITED = 3
# linux/netfilter/nf_conntrack_common.h: NF_CT_STATE_BIT(IP_CT_NEW), and IP_CT_DIR_ORIGINAL
CT_STATE_NEW = 8
CT_DIR_ORIGINAL = 0
NFPROTO_IPV4, NFPROTO_IPV6 = 2, 10
IPPROTO_TCP = 6


def u32(value: int) -> bytes:
    """A 32-bit register value in host byte order (marks, ct state)."""
    return struct.pack("=I", value)


def _data(value: bytes) -> dict:
    return {"attrs": [("NFTA_DATA_VALUE", value)]}


# --- single expressions ----------------------------------------------------


def ct_load(key: int) -> Expression:
    return genex("ct", {"dreg": REG, "key": key})


def ct_store(key: int) -> Expression:
    return genex("ct", {"key": key, "sreg": REG})


def meta_load(key: int) -> Expression:
    return genex("meta", {"dreg": REG, "key": key})


def meta_store(key: int) -> Expression:
    return genex("meta", {"key": key, "sreg": REG})


def immediate(value: bytes) -> Expression:
    return genex("immediate", {"dreg": REG, "data": _data(value)})


def cmp(op: int, value: bytes) -> Expression:
    return genex("cmp", {"sreg": REG, "op": op, "data": _data(value)})


def bitwise(mask: bytes, xor: bytes | None = None) -> Expression:
    """reg = (reg & mask) ^ xor"""
    xor = bytes(len(mask)) if xor is None else xor
    return genex("bitwise", {"sreg": REG, "dreg": REG, "len": len(mask), "mask": _data(mask), "xor": _data(xor)})


def payload_load(base: int, offset: int, length: int) -> Expression:
    return genex("payload", {"dreg": REG, "base": base, "offset": offset, "len": length})


def verdict(code: int, chain: str | None = None) -> Expression:
    attrs = [("NFTA_VERDICT_CODE", code)] + ([("NFTA_VERDICT_CHAIN", chain)] if chain else [])
    return genex("immediate", {"dreg": VERDICT_REG, "data": {"attrs": [("NFTA_DATA_VERDICT", {"attrs": attrs})]}})


def reject(kind: int, code: int = 0) -> Expression:
    return genex("reject", {"type": kind, "icmp_code": code})


def numgen_random(modulus: int) -> Expression:
    """reg = random in [0, modulus).

    Not ``genex``: it would name the attributes NFTA_NUMGEN_*; pyroute2's nla
    map and the kernel call them NFTA_NG_* (EINVAL otherwise).
    """
    data = [("NFTA_NG_DREG", REG), ("NFTA_NG_MODULUS", modulus), ("NFTA_NG_TYPE", NUMGEN_RANDOM), ("NFTA_NG_OFFSET", 0)]
    return {"attrs": [("NFTA_EXPR_NAME", "numgen"), ("NFTA_EXPR_DATA", {"attrs": data})]}


def map_lookup(map_name: str) -> Expression:
    """reg = @map_name[reg] (no element: the rule ends)."""
    return genex("lookup", {"set": map_name, "sreg": REG, "dreg": REG})


# --- matches and actions ----------------------------------------------------


def ct_mark_is(mask: int, value: int, op: int = CMP_EQ) -> Rule:
    """ct mark & mask == value (or !=)"""
    return [ct_load(CT_MARK), bitwise(u32(mask)), cmp(op, u32(value))]


def ct_state_is_not_new() -> Rule:
    """ct state & new == 0"""
    return [ct_load(CT_STATE), bitwise(u32(CT_STATE_NEW)), cmp(CMP_EQ, u32(0))]


def ct_direction_original() -> Rule:
    return [ct_load(CT_DIRECTION), cmp(CMP_EQ, bytes([CT_DIR_ORIGINAL]))]


def l4proto_is(proto: int, op: int = CMP_EQ) -> Rule:
    """meta l4proto == proto (or !=)"""
    return [meta_load(META_L4PROTO), cmp(op, bytes([proto]))]


def daddr_in(network: IPv4Network | IPv6Network) -> Rule:
    """ip daddr <network> / ip6 daddr <network> (in the inet family: the protocol first)."""
    proto, offset = (NFPROTO_IPV4, 16) if network.version == 4 else (NFPROTO_IPV6, 24)
    rule = [
        meta_load(META_NFPROTO),
        cmp(CMP_EQ, bytes([proto])),
        payload_load(PAYLOAD_NETWORK_HEADER, offset, network.max_prefixlen // 8),
    ]
    if network.prefixlen != network.max_prefixlen:
        rule.append(bitwise(network.netmask.packed))
    return rule + [cmp(CMP_EQ, network.network_address.packed)]


def ct_mark_merge(mask: int, mark: int) -> Rule:
    """ct mark = (ct mark & ~mask) | mark: our bits only (``mark`` lies within ``mask``)."""
    return [ct_load(CT_MARK), bitwise(u32(~mask & 0xFFFFFFFF), u32(mark)), ct_store(CT_MARK)]


def meta_mark_merge(mask: int, mark: int) -> Rule:
    """meta mark = (meta mark & ~mask) | mark: our bits only, whatever else marks the packet."""
    return [meta_load(META_MARK), bitwise(u32(~mask & 0xFFFFFFFF), u32(mark)), meta_store(META_MARK)]


def ct_mark_set_from_random_map(map_name: str, modulus: int) -> Rule:
    """ct mark set numgen random mod <modulus> map @<map_name> (the whole ct mark: the kernel
    cannot merge two registers before 6.13)"""
    return [numgen_random(modulus), map_lookup(map_name), ct_store(CT_MARK)]
