"""What a failed netlink operation means, decided in one place.

pyroute2 raises ``NetlinkError`` with the kernel's errno; the adapter turns
the errnos callers act on into these classes (``domain_error``), so nobody
outside compares errno values. They subclass ``NetlinkError``: ``.code`` is
still the errno, and ``KERNEL_ERRORS`` catches them together with whatever
pyroute2 or the socket raises.
"""

from __future__ import annotations

import errno
import functools
from collections.abc import Awaitable
from typing import NoReturn

from pyroute2.netlink.exceptions import NetlinkError


class KernelError(NetlinkError):
    """A netlink operation the kernel refused; ``.code`` is the errno."""


class NotFound(KernelError):
    """The device, route or address is not there (a delete of it is done already)."""


class AlreadyExists(KernelError):
    """The name or route is taken."""


class KernelFeatureMissing(KernelError):
    """The running kernel lacks a device type this project needs; ``str()`` names it."""

    def __init__(self, feature: str):
        super().__init__(errno.EOPNOTSUPP, feature)
        self.feature = feature

    def __str__(self) -> str:
        return self.feature


class EventsLost(KernelError):
    """The event socket overflowed (ENOBUFS): some events were dropped; read the state again."""


# Every class the adapter raises, with what pyroute2 and the socket itself raise (a closed or
# vanished namespace is an OSError): the one tuple callers catch.
KERNEL_ERRORS = (NetlinkError, OSError)

_BY_ERRNO: dict[int, type[KernelError]] = {
    errno.ENODEV: NotFound,  # no such device
    errno.ENOENT: NotFound,  # no such IPv6 route
    errno.ESRCH: NotFound,  # no such IPv4 route
    errno.EADDRNOTAVAIL: NotFound,  # no such address
    errno.EEXIST: AlreadyExists,
    errno.ENOBUFS: EventsLost,
}


def domain_error(exc: NetlinkError) -> KernelError:
    """``exc`` as the class its errno means (``KernelError`` for any other errno)."""
    if isinstance(exc, KernelError):
        return exc
    return _BY_ERRNO.get(exc.code, KernelError)(exc.code, exc.args[1] if len(exc.args) > 1 else None)


def event_socket_error(exc: NetlinkError | OSError) -> Exception:
    """What a failed read of an event socket means: ENOBUFS (pyroute2 raises that one as
    OSError) is ``EventsLost``; anything else as ``domain_error`` or the OSError it is."""
    code = exc.code if isinstance(exc, NetlinkError) else exc.errno
    if code == errno.ENOBUFS:
        return EventsLost(code, "netlink event socket overflowed: events were lost")
    return domain_error(exc) if isinstance(exc, NetlinkError) else exc


def creation_error(exc: NetlinkError, feature: str) -> KernelError:
    """What a refused create means: EOPNOTSUPP is a kernel built without ``feature``."""
    return KernelFeatureMissing(feature) if exc.code == errno.EOPNOTSUPP else domain_error(exc)


def raise_domain_error(exc: Exception, error: Exception | None = None) -> NoReturn:
    """Raise ``error`` (default: ``domain_error(exc)``) in place of pyroute2's ``exc``."""
    error = domain_error(exc) if error is None else error
    if error is exc:
        raise exc
    raise error from exc


async def deleted(request: Awaitable) -> bool:
    """Await a delete request: True if it deleted something, False if it was not there."""
    try:
        await request
    except NetlinkError as exc:
        if isinstance(domain_error(exc), NotFound):
            return False
        raise_domain_error(exc)
    return True


def translated(function):
    """Decorator for an adapter coroutine: pyroute2's ``NetlinkError`` leaves it as ``domain_error``."""

    @functools.wraps(function)
    async def wrapper(*args, **kwargs):
        try:
            return await function(*args, **kwargs)
        except NetlinkError as exc:
            raise_domain_error(exc)

    return wrapper
