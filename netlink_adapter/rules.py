"""Policy-routing rules ``fwmark <mark>/<mask> lookup <table>``: typed dump, idempotent add and delete."""

from __future__ import annotations

from dataclasses import dataclass
from socket import AF_INET, AF_INET6

from pyroute2 import AsyncIPRoute
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl.fibmsg import FR_ACT_TO_TBL

from netlink_adapter.dumps import dump
from netlink_adapter.errors import AlreadyExists, deleted, domain_error, raise_domain_error, translated

FAMILIES = (AF_INET, AF_INET6)


@dataclass(frozen=True)
class FwmarkRule:
    """``ip rule add priority <priority> fwmark <mark>/<mask> lookup <table>`` in one family."""

    family: int
    priority: int
    mark: int
    mask: int
    table: int


def _rule(msg) -> FwmarkRule | None:
    """A dumped rule as a FwmarkRule; None for any other kind of rule."""
    if msg["action"] != FR_ACT_TO_TBL or msg.get("FRA_FWMARK") is None:
        return None
    return FwmarkRule(
        family=msg["family"],
        priority=msg.get("FRA_PRIORITY", 0),
        mark=msg.get("FRA_FWMARK"),
        mask=msg.get("FRA_FWMASK", 0xFFFFFFFF),
        table=msg.get("FRA_TABLE", msg["table"]),
    )


@translated
async def dump_fwmark_rules(ipr: AsyncIPRoute) -> list[FwmarkRule]:
    """Every fwmark → table rule, IPv4 and IPv6."""
    found = []
    for family in FAMILIES:
        for msg in await dump(ipr, "rule", family=family):
            rule = _rule(msg)
            if rule is not None:
                found.append(rule)
    return found


def _args(rule: FwmarkRule) -> dict:
    return {
        "family": rule.family,
        "priority": rule.priority,
        "fwmark": rule.mark,
        "fwmask": rule.mask,
        "table": rule.table,
    }


async def ensure_fwmark_rule(ipr: AsyncIPRoute, rule: FwmarkRule) -> bool:
    """Add ``rule`` unless it is there; True if added (pyroute2 asks with NLM_F_EXCL: a twin is EEXIST)."""
    try:
        await ipr.rule("add", **_args(rule))
    except NetlinkError as exc:
        if isinstance(domain_error(exc), AlreadyExists):
            return False
        raise_domain_error(exc)
    return True


@translated
async def delete_fwmark_rule(ipr: AsyncIPRoute, rule: FwmarkRule) -> bool:
    """Delete ``rule``; True if deleted, False if it was not there."""
    return await deleted(ipr.rule("del", **_args(rule)))
