"""One small asyncio HTTP/1.0 listener for ``/metrics``, ``/healthz`` and ``/readyz``.

Enough HTTP for kubelet probes and Prometheus scrapes, with bounded reads and
a per-request deadline, so a slow or hostile client cannot hold the daemon.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from daemonkit.lifecycle import StartupError

LOG = logging.getLogger(__name__)

MAX_REQUEST_BYTES = 8192
REQUEST_DEADLINE = 5.0

# (ok, reason): reason is the body, so an operator sees why with curl.
Check = Callable[[], tuple[bool, str]]


@dataclass
class Endpoints:
    registry: CollectorRegistry
    healthz: Check
    readyz: Check


class HttpServer:
    def __init__(self, endpoints: Endpoints, host: str | None, port: int):
        self.endpoints = endpoints
        self.host = host
        self.port = port
        self._server: asyncio.base_events.Server | None = None

    async def start(self) -> None:
        """Listen; StartupError (one line for the operator) when the port cannot be had."""
        try:
            self._server = await asyncio.start_server(
                self._handle, self.host, self.port, reuse_address=True, limit=MAX_REQUEST_BYTES
            )
        except OSError as exc:
            raise StartupError(f"cannot serve HTTP on port {self.port}: {exc.strerror or exc}") from None
        sockets = self._server.sockets or []
        if self.port == 0 and sockets:
            self.port = sockets[0].getsockname()[1]
        LOG.info("http listening", extra={"port": self.port, "host": self.host or "*"})

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            try:
                await asyncio.wait_for(self._server.wait_closed(), 0.5)
            except asyncio.TimeoutError:
                pass

    def _route(self, method: str, path: str) -> tuple[int, str, bytes]:
        if method not in ("GET", "HEAD"):
            return 405, "text/plain; charset=utf-8", b"method not allowed\n"
        path = path.split("?", 1)[0]
        if path == "/metrics":
            return 200, CONTENT_TYPE_LATEST, generate_latest(self.endpoints.registry)
        if path in ("/healthz", "/readyz"):
            ok, reason = (self.endpoints.healthz if path == "/healthz" else self.endpoints.readyz)()
            return (200 if ok else 503), "text/plain; charset=utf-8", (reason.rstrip("\n") + "\n").encode()
        return 404, "text/plain; charset=utf-8", b"not found\n"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(REQUEST_DEADLINE):
                head = await reader.readuntil(b"\r\n\r\n")
                request_line = head.split(b"\r\n", 1)[0].decode("latin-1")
                parts = request_line.split()
                if len(parts) != 3 or not parts[2].startswith("HTTP/"):
                    status, ctype, body = 400, "text/plain; charset=utf-8", b"bad request\n"
                    method = "GET"
                else:
                    method = parts[0]
                    status, ctype, body = self._route(method, parts[1])
                reason = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed"}.get(
                    status, "Service Unavailable"
                )
                headers = (
                    f"HTTP/1.0 {status} {reason}\r\nContent-Type: {ctype}\r\n"
                    f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
                ).encode()
                writer.write(headers if method == "HEAD" else headers + body)
                await writer.drain()
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, asyncio.TimeoutError, ConnectionError):
            pass  # a client that is slow, too large or gone gets nothing
        finally:
            writer.close()
