"""Configuration from the environment (pydantic-settings), with one-line errors.

Settings classes use vpn2's environment variable names without a prefix. Lists
are comma-separated as in vpn2 (``SHOOT_POD_NETWORKS=10.0.0.0/16,fd00::/64``),
not JSON.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from ipaddress import IPv4Network, IPv6Network, ip_network
from typing import Annotated, NoReturn, TypeVar

from pydantic import BeforeValidator, ValidationError
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

EXIT_CONFIG = 2

IPNetwork = IPv4Network | IPv6Network


def _split_comma(value: object) -> object:
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


def _network(value: object) -> object:
    # vpn2 accepts host bits (net.ParseCIDR drops them); so do we.
    if isinstance(value, str):
        try:
            return ip_network(value.strip(), strict=False)
        except ValueError:
            raise ValueError(f"{value!r} is not an IP network in CIDR notation") from None
    return value


def _network_list(value: object) -> object:
    value = _split_comma(value)
    if isinstance(value, list):
        return [_network(item) for item in value]
    return value


def _optional_network(value: object) -> object:
    if isinstance(value, str) and not value.strip():
        return None
    return _network(value)


NetworkList = Annotated[list[IPNetwork], NoDecode, BeforeValidator(_network_list)]
OptionalNetwork = Annotated[IPNetwork | None, BeforeValidator(_optional_network)]
CommaList = Annotated[list[str], NoDecode, BeforeValidator(_split_comma)]


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
    sys.exit(EXIT_CONFIG)
