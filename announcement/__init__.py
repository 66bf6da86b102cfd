"""The announcement a path-controller sends to every tunnel-controller (UDP6 port 5400)."""

from announcement.wire import (
    ANNOUNCE_PORT,
    MAX_DATAGRAM,
    Announcement,
    Rejected,
    decode,
    encode,
    load_key,
)

__all__ = ["ANNOUNCE_PORT", "MAX_DATAGRAM", "Announcement", "Rejected", "decode", "encode", "load_key"]
