"""Configuration from the environment (pydantic-settings), with one-line errors.

Settings classes use vpn2's environment variable names without a prefix. The
value types every daemon shares:

- ``Duration``: seconds as a number (``4``, ``0.5``) or Go-style units
  (``500ms``, ``4s``, ``10m``, ``1h``, ``1m30s``); bounds given with
  ``Field(gt=..., le=...)`` apply to the seconds.
- comma-separated lists as in vpn2 (``SHOOT_POD_NETWORKS=10.0.0.0/16,fd00::/64``),
  not JSON: ``NetworkList``, ``IPAddressList``, ``IPv6AddressList``,
  ``CommaList``; ``comma_list(parse, what)`` makes more.
"""

from __future__ import annotations

import argparse
import math
import re
import sys
from collections.abc import Callable
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address, ip_network
from typing import Annotated, NoReturn, TypeVar

from pydantic import BeforeValidator, ValidationError
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from daemonkit.lifecycle import ExitCode

IPNetwork = IPv4Network | IPv6Network
IPAddress = IPv4Address | IPv6Address
T = TypeVar("T")

# --- durations -----------------------------------------------------------------

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(value: object) -> object:
    """Seconds from ``4``, ``0.5``, ``500ms``, ``10m`` or ``1m30s``; other types pass through."""
    if not isinstance(value, str):
        return value
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        parts = _DURATION_PART.findall(text)
        if not parts or "".join(number + unit for number, unit in parts) != text:
            raise ValueError(f"{value!r} is not a duration (e.g. 4, 500ms, 4s, 10m)") from None
        return sum(float(number) * _UNIT_SECONDS[unit] for number, unit in parts)
    if not math.isfinite(seconds):
        raise ValueError(f"{value!r} is not a duration (e.g. 4, 500ms, 4s, 10m)")
    return seconds


Duration = Annotated[float, BeforeValidator(parse_duration)]


def is_duration(field: FieldInfo) -> bool:
    """Whether a settings field is a ``Duration`` (e.g. to document its syntax)."""
    return any(getattr(meta, "func", None) is parse_duration for meta in field.metadata)


# --- values and comma-separated lists of them -------------------------------------


def parsed(parse: Callable[[str], T], what: str) -> Callable[[object], object]:
    """A before-validator turning a string into ``parse(text)``; an error names the text:
    ``'bogus' is not <what>``. Values that are not strings pass through."""

    def validate(value: object) -> object:
        if not isinstance(value, str):
            return value
        text = value.strip()
        try:
            return parse(text)
        except ValueError:
            raise ValueError(f"{text!r} is not {what}") from None

    return validate


def comma_list(parse: Callable[[str], T], what: str) -> Callable[[object], object]:
    """A before-validator for ``"a, b,,c"``: each non-empty item, stripped, through ``parse``;
    the first bad item raises ``'item' is not <what>``. Non-strings (defaults) pass through."""
    item = parsed(parse, what)

    def validate(value: object) -> object:
        if not isinstance(value, str):
            return value
        return [item(part) for part in value.split(",") if part.strip()]

    return validate


def _network(text: str) -> IPNetwork:
    return ip_network(text, strict=False)  # vpn2 accepts host bits (net.ParseCIDR drops them)


def _optional_network(value: object) -> object:
    if isinstance(value, str) and not value.strip():
        return None
    return _parse_network(value)


_parse_network = parsed(_network, "an IP network in CIDR notation")

IPAddressValue = Annotated[IPAddress, BeforeValidator(parsed(ip_address, "an IP address"))]
OptionalNetwork = Annotated[IPNetwork | None, BeforeValidator(_optional_network)]
NetworkList = Annotated[
    list[IPNetwork], NoDecode, BeforeValidator(comma_list(_network, "an IP network in CIDR notation"))
]
IPAddressList = Annotated[list[IPAddress], NoDecode, BeforeValidator(comma_list(ip_address, "an IP address"))]
IPv6AddressList = Annotated[list[IPv6Address], NoDecode, BeforeValidator(comma_list(IPv6Address, "an IPv6 address"))]
CommaList = Annotated[list[str], NoDecode, BeforeValidator(comma_list(str, "a string"))]

# --- settings and their errors -------------------------------------------------------


class EnvSettings(BaseSettings):
    """Base for the daemons' settings: plain environment variables, no prefix."""

    model_config = SettingsConfigDict(case_sensitive=False, extra="ignore", frozen=True)


S = TypeVar("S", bound=BaseSettings)


def describe_error(exc: ValidationError) -> str:
    """One line naming each offending variable and what is wrong with it."""
    parts = []
    for error in exc.errors(include_url=False):
        names = [str(part).upper() for part in error["loc"] if isinstance(part, str)]
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "missing":
            message = "required but not set"
        parts.append(f"{names[0]}: {message}" if names else message)
    return "; ".join(parts)


def load_or_exit(factory: Callable[[], S], program: str) -> S:
    """Build settings; on invalid input print one line and exit 2 (no traceback)."""
    try:
        return factory()
    except ValidationError as exc:
        config_error(program, describe_error(exc))
    except ValueError as exc:
        config_error(program, str(exc))


def config_error(program: str, message: str) -> NoReturn:
    print(f"{program}: invalid configuration: {message}", file=sys.stderr)
    sys.exit(ExitCode.CONFIG)


def daemon_settings(factory: Callable[[], S], program: str, purpose: str, argv: list[str] | None = None) -> S:
    """A daemon's start: ``--help`` (it takes no arguments), then its settings from the
    environment, or one line and exit 2."""
    parser = argparse.ArgumentParser(prog=program, description=f"{purpose}; configured by environment variables (see README).")
    parser.parse_args(argv)
    return load_or_exit(factory, program)
