"""The address plan of the bond network, compatible with gardener/vpn2.

Every peer's bond0 lives in one /104 inside ``VPN_NETWORK`` (a /96; default
``fd8f:6d53:b97a:1::/96``). The last four bytes of an address say who it is::

    bytes 12 13 14 15
          00 0b 00 jj   shoot client j (vpn-shoot-j)          ::b:<j>
          00 0a hh ll   seed client with index 0xhhll          ::a:<hhll>, index 1..0xffff
          01 ii 00 00   OpenVPN server i pool (/112)            ::10<i>:0/112

Device names: the seed side reaches shoot client j through ``bond0-ip6tnl<j>``;
the shoot side reaches a seed client through ``bond0ip6tnl%02x%02x`` built from
the last two bytes of its address (15 characters, the kernel's limit).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from ipaddress import IPv6Address, IPv6Interface, IPv6Network, ip_network

DEFAULT_VPN_NETWORK = "fd8f:6d53:b97a:1::/96"
VPN_NETWORK_PREFIXLEN = 96
BOND_PREFIXLEN = 104
SERVER_POOL_PREFIXLEN = 112
BOND_DEVICE = "bond0"
SEED_INDEX_MAX = 0xFFFF
SHOOT_INDEX_MAX = 0xFF

_SHOOT_MARK = 0x0B
_SEED_MARK = 0x0A
_SERVER_MARK = 0x01


def parse_vpn_network(text: str) -> IPv6Network:
    """Parse ``VPN_NETWORK``; anything but an IPv6 /96 is an error."""
    try:
        network = ip_network(text.strip(), strict=False)
    except ValueError as exc:
        raise ValueError(f"not an IPv6 network: {text!r}") from exc
    if network.version != 6:
        raise ValueError(f"must be an IPv6 network, got {text!r}")
    if network.prefixlen != VPN_NETWORK_PREFIXLEN:
        raise ValueError(f"must be a /96, got /{network.prefixlen}")
    return network


@dataclass(frozen=True)
class AddressPlan:
    """Addresses derived from one ``VPN_NETWORK``."""

    network: IPv6Network

    @classmethod
    def from_text(cls, text: str = DEFAULT_VPN_NETWORK) -> AddressPlan:
        return cls(parse_vpn_network(text))

    def _address(self, b12: int, b13: int, b14: int, b15: int) -> IPv6Address:
        base = int(self.network.network_address)
        return IPv6Address(base | (b12 << 24) | (b13 << 16) | (b14 << 8) | b15)

    @property
    def bond_network(self) -> IPv6Network:
        """The on-link prefix every bond0 carries (``…::/104``)."""
        return IPv6Network((self.network.network_address, BOND_PREFIXLEN))

    def shoot_client(self, index: int) -> IPv6Address:
        """Bond address of vpn-shoot ``index`` (``…::b:<index>``)."""
        if not 0 <= index <= SHOOT_INDEX_MAX:
            raise ValueError(f"shoot client index must be 0..{SHOOT_INDEX_MAX}, got {index}")
        return self._address(0, _SHOOT_MARK, 0, index)

    def shoot_clients(self, count: int) -> list[IPv6Address]:
        return [self.shoot_client(j) for j in range(count)]

    def seed_client(self, index: int) -> IPv6Address:
        """Bond address of the seed client (kube-apiserver pod) with ``index`` (``…::a:<index>``)."""
        if not 1 <= index <= SEED_INDEX_MAX:
            raise ValueError(f"seed client index must be 1..{SEED_INDEX_MAX}, got {index}")
        return self._address(0, _SEED_MARK, index >> 8, index & 0xFF)

    def server_pool(self, index: int) -> IPv6Network:
        """Address pool OpenVPN server ``index`` hands to its clients (``…::10<index>:0/112``)."""
        if not 0 <= index <= 0xFF:
            raise ValueError(f"server index must be 0..255, got {index}")
        return IPv6Network((self._address(_SERVER_MARK, index, 0, 0), SERVER_POOL_PREFIXLEN))

    @staticmethod
    def on_bond(address: IPv6Address) -> IPv6Interface:
        """``address`` with the bond prefix length, as configured on bond0."""
        return IPv6Interface((address, BOND_PREFIXLEN))

    def _suffix(self, address: IPv6Address) -> tuple[int, int, int, int] | None:
        if address not in self.network:
            return None
        low = int(address) & 0xFFFFFFFF
        return (low >> 24) & 0xFF, (low >> 16) & 0xFF, (low >> 8) & 0xFF, low & 0xFF

    def seed_client_index(self, address: IPv6Address) -> int | None:
        """Index of a seed client address, or None if ``address`` is not one."""
        suffix = self._suffix(address)
        if suffix is None or suffix[:2] != (0, _SEED_MARK):
            return None
        index = (suffix[2] << 8) | suffix[3]
        return index if index >= 1 else None

    def shoot_client_index(self, address: IPv6Address) -> int | None:
        """Index of a shoot client address, or None if ``address`` is not one."""
        suffix = self._suffix(address)
        if suffix is None or suffix[:3] != (0, _SHOOT_MARK, 0):
            return None
        return suffix[3]


def seed_tunnel_name(shoot_index: int) -> str:
    """Seed-side ip6tnl towards shoot client ``shoot_index``."""
    return f"{BOND_DEVICE}-ip6tnl{shoot_index}"


def shoot_tunnel_name(remote: IPv6Address) -> str:
    """Shoot-side ip6tnl towards the seed client at ``remote``."""
    packed = remote.packed
    return f"{BOND_DEVICE}ip6tnl{packed[14]:02x}{packed[15]:02x}"


SHOOT_TUNNEL_NAME = re.compile(rf"^{BOND_DEVICE}ip6tnl[0-9a-f]{{4}}$")
SEED_TUNNEL_NAME = re.compile(rf"^{BOND_DEVICE}-ip6tnl(\d+)$")


def seed_client_index_for_pod(pod_name: str) -> int:
    """Deterministic seed-client index for a kube-apiserver pod.

    The first four bytes of SHA-256(name), big-endian, mod 65535, plus 1.

    Two pods of one control plane collide with probability about n(n-1)/2/65535
    (n = 6: 0.02 %); the tunnel-controller reports a collision as one bond
    address announcing alternating pod IPs. ``SEED_CLIENT_INDEX`` overrides it.
    """
    if not pod_name:
        raise ValueError("pod name is empty")
    digest = hashlib.sha256(pod_name.encode()).digest()
    return int.from_bytes(digest[:4], "big") % SEED_INDEX_MAX + 1


def shoot_client_index_for_pod(pod_name: str) -> int:
    """Index of a vpn-shoot pod from its StatefulSet name (``vpn-shoot-1`` → 1), as vpn2."""
    _, _, tail = pod_name.rpartition("-")
    if not tail.isdigit():
        raise ValueError(f"pod name {pod_name!r} does not end in -<index>")
    index = int(tail)
    if index > SHOOT_INDEX_MAX:
        raise ValueError(f"pod name {pod_name!r}: index {index} is above {SHOOT_INDEX_MAX}")
    return index
