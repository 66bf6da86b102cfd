"""The sysctls vpn2 sets on each side (its ``KernelSettings``).

They are written under /proc/sys and so act on the network namespace the
process runs in.
"""

from __future__ import annotations

from pathlib import Path

PROC_SYS = Path("/proc/sys")

TCP_BUFFERS = "65536 12582912 16777216"

BOTH_SIDES = {
    # Packets arriving over the other path after a switch are not martians (vpn2 #238).
    "net/ipv4/conf/all/log_martians": "0",
    "net/ipv4/conf/default/log_martians": "0",
    "net/ipv4/conf/all/rp_filter": "0",
    "net/ipv4/conf/default/rp_filter": "0",
    "net/ipv4/tcp_wmem": TCP_BUFFERS,
    "net/ipv4/tcp_rmem": TCP_BUFFERS,
}
SEED_SIDE = {
    "net/ipv6/conf/all/disable_ipv6": "0",
}
SHOOT_SIDE = {
    "net/ipv4/ip_local_port_range": "1024 65535",
    "net/ipv4/tcp_tw_reuse": "1",
    "net/ipv4/tcp_fin_timeout": "30",
    "net/ipv4/ip_forward": "1",
    "net/ipv6/conf/all/forwarding": "1",
}
# Present only when conntrack is loaded; vpn-shoot sets them when they exist.
SHOOT_CONNTRACK = {
    "net/netfilter/nf_conntrack_tcp_timeout_established": "600",
    "net/netfilter/nf_conntrack_tcp_timeout_syn_sent": "30",
    "net/netfilter/nf_conntrack_tcp_timeout_syn_recv": "30",
    "net/netfilter/nf_conntrack_tcp_timeout_fin_wait": "30",
    "net/netfilter/nf_conntrack_tcp_timeout_time_wait": "30",
    "net/netfilter/nf_conntrack_tcp_timeout_close_wait": "30",
    "net/netfilter/nf_conntrack_tcp_timeout_unacknowledged": "60",
    "net/netfilter/nf_conntrack_tcp_timeout_max_retrans": "120",
}


# Neighbour discovery on bond0, both sides. Echo replies and tunnelled
# traffic never confirm a neighbour, so the kernel re-probes it every
# reachable time; with the defaults (3 unicast probes 1 s apart) a lossy path
# loses the entry now and then and drops everything for a second or more.
# More, quicker probes (and multicast ones before giving up) make that rare
# and short: at 20 % loss each way P(failed) goes from 5 % to 1e-4 per cycle.
BOND_NEIGHBOUR = {
    "ucast_solicit": "6",
    "mcast_resolicit": "3",
    "retrans_time_ms": "200",
}


def bond_neighbour_sysctls(bond: str) -> dict[str, str]:
    return {f"net/ipv6/neigh/{bond}/{name}": value for name, value in BOND_NEIGHBOUR.items()}


def _normalise(value: str) -> str:
    return " ".join(value.split())


def apply_sysctls(values: dict[str, str], *, optional: bool = False, root: Path = PROC_SYS) -> list[str]:
    """Write each sysctl whose value differs; return the names changed.

    A missing required sysctl raises FileNotFoundError; a missing optional one
    is skipped.
    """
    changed = []
    for name, value in values.items():
        path = root / name
        try:
            current = path.read_text()
        except FileNotFoundError:
            if optional:
                continue
            raise
        if _normalise(current) != _normalise(value):
            path.write_text(value)
            changed.append(name)
    return changed


def sysctls_for(shoot: bool) -> tuple[dict[str, str], dict[str, str]]:
    """(required, optional) sysctls for one side."""
    if shoot:
        return {**BOTH_SIDES, **SHOOT_SIDE}, SHOOT_CONNTRACK
    return {**BOTH_SIDES, **SEED_SIDE}, {}
