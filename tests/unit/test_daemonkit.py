"""Shared daemon plumbing: JSON logs, rate limiting, heartbeats, HTTP endpoints."""

import asyncio
import io
import json
import logging

from prometheus_client import CollectorRegistry, Counter

from daemonkit.http import Endpoints, HttpServer
from daemonkit.lifecycle import Heartbeats
from daemonkit.logs import JsonFormatter, RateLimiter


class FakeClock:
    def __init__(self, now: float = 1000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_json_log_line_carries_extra_fields():
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("test.json")
    logger.addHandler(handler)
    logger.propagate = False
    logger.warning("primary switched", extra={"old": 0, "new": 1, "reason": "primary down"})
    entry = json.loads(stream.getvalue())
    assert entry["msg"] == "primary switched"
    assert (entry["level"], entry["logger"]) == ("warning", "test.json")
    assert (entry["old"], entry["new"], entry["reason"]) == (0, 1, "primary down")
    assert entry["ts"].endswith("+00:00")


def test_rate_limiter_counts_what_it_holds_back():
    clock = FakeClock()
    limiter = RateLimiter(interval=10, clock=clock)
    assert limiter.allow("malformed") == 0
    assert limiter.allow("malformed") is None
    assert limiter.allow("malformed") is None
    assert limiter.allow("oversized") == 0  # keys are independent
    clock.now += 10
    assert limiter.allow("malformed") == 2


def test_rate_limiter_memory_is_bounded():
    limiter = RateLimiter(interval=10, clock=FakeClock(), max_keys=4)
    for key in range(1000):
        limiter.allow(key)
    assert len(limiter._next) <= 4


def test_heartbeats():
    clock = FakeClock()
    beats = Heartbeats(clock)
    beats.register("probe", allowed_gap=1.0)
    assert beats.check() == (True, "ok")
    clock.now += 1.5
    ok, reason = beats.check()
    assert not ok and "probe last ran 1.5 s ago" in reason
    beats.beat("probe")
    assert beats.check()[0]


async def http_get(port: int, request: bytes) -> tuple[int, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    await writer.drain()
    data = await reader.read()
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


async def test_http_endpoints():
    registry = CollectorRegistry()
    Counter("things", "Things.", registry=registry).inc(3)
    ready = {"ok": False}
    server = HttpServer(
        Endpoints(registry, healthz=lambda: (True, "ok"), readyz=lambda: (ready["ok"], "no route to the shoot")),
        "127.0.0.1",
        0,
    )
    await server.start()
    try:
        assert await http_get(server.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n") == (200, b"ok\n")
        assert await http_get(server.port, b"GET /readyz HTTP/1.1\r\n\r\n") == (503, b"no route to the shoot\n")
        ready["ok"] = True
        assert (await http_get(server.port, b"GET /readyz HTTP/1.0\r\n\r\n"))[0] == 200
        status, body = await http_get(server.port, b"GET /metrics HTTP/1.1\r\n\r\n")
        assert status == 200 and b"things_total 3.0" in body
        assert (await http_get(server.port, b"GET /nope HTTP/1.1\r\n\r\n"))[0] == 404
        assert (await http_get(server.port, b"POST /readyz HTTP/1.1\r\n\r\n"))[0] == 405
        assert (await http_get(server.port, b"garbage\r\n\r\n"))[0] == 400
        # An oversized request gets no answer and does not disturb the next one.
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"GET /" + b"a" * 20000)
        await writer.drain()
        assert await reader.read() == b""
        writer.close()
        assert (await http_get(server.port, b"GET /healthz HTTP/1.1\r\n\r\n"))[0] == 200
    finally:
        await server.close()
