"""Real OpenVPN 2.6 for the end-to-end topology: test-time PKI and configs.

The servers run as vpn2's HA servers do in essence (tap, TCP, TLS,
client-to-client, duplicate-cn), without what a test cannot use (tls-auth,
pushed addresses, status files, firewall scripts). Clients attach to the
persistent taps that ``bonding setup`` created.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

OPENVPN_PORT = 1194
MANAGEMENT_PORT = 7505  # + server index, as vpn2's shoot clients


@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_pki(directory: Path) -> Pki:
    """A CA, a server and a (shared) client certificate, EC P-256, valid for two days."""
    directory.mkdir(parents=True, exist_ok=True)
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-days", "2", "-subj", "/CN=test-ca", cwd=directory)
    for name, usage in (("server", "serverAuth"), ("client", "clientAuth")):
        (directory / f"{name}.ext").write_text(
            f"extendedKeyUsage={usage}\nkeyUsage=digitalSignature,keyAgreement\n"
        )
        _openssl("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN=vpn-{name}", cwd=directory)
        _openssl(
            "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", f"{name}.crt", "-days", "2", "-extfile", f"{name}.ext", cwd=directory,
        )
    return Pki(
        directory / "ca.crt",
        directory / "server.crt",
        directory / "server.key",
        directory / "client.crt",
        directory / "client.key",
    )


def up_script(directory: Path) -> Path:
    """The server's own tap must be up or OpenVPN cannot hand it the frames it floods."""
    script = directory / "tap-up.sh"
    script.write_text('#!/bin/sh\nexec ip link set dev "$1" up\n')
    script.chmod(0o755)
    return script


# vpn2's timing (reference/vpn2-behavior.md §5): the server pushes keepalive 10 30; clients
# retry after 1 s, backing off to 5 s.
VPN2_KEEPALIVE = (10, 30)
VPN2_CONNECT_RETRY = (1, 5)


def server_config(pki: Pki, listen: str, up: Path, keepalive: tuple[int, int] = VPN2_KEEPALIVE) -> str:
    return "\n".join(
        [
            "mode server",
            "tls-server",
            "dev tap0",
            "dev-type tap",
            "proto tcp-server",
            f"local {listen}",
            f"port {OPENVPN_PORT}",
            f"ca {pki.ca}",
            f"cert {pki.server_cert}",
            f"key {pki.server_key}",
            "dh none",
            "client-to-client",
            "duplicate-cn",
            f"keepalive {keepalive[0]} {keepalive[1]}",
            "data-ciphers AES-256-GCM",
            "tcp-nodelay",
            "script-security 2",
            f"up {up}",
            "verb 3",
            "",
        ]
    )


def client_config(
    pki: Pki, tap: str, remote: str, management_port: int | None = None, connect_retry: tuple[int, int] = VPN2_CONNECT_RETRY
) -> str:
    lines = [
        "client",
        f"dev {tap}",
        "dev-type tap",
        "proto tcp-client",
        f"remote {remote} {OPENVPN_PORT}",
        "nobind",
        f"ca {pki.ca}",
        f"cert {pki.client_cert}",
        f"key {pki.client_key}",
        "remote-cert-tls server",
        "data-ciphers AES-256-GCM",
        f"connect-retry {connect_retry[0]} {connect_retry[1]}",
        "tcp-nodelay",
        "verb 3",
    ]
    if management_port is not None:
        lines.append(f"management 127.0.0.1 {management_port}")
    return "\n".join(lines) + "\n"
