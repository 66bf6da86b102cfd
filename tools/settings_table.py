"""README.md's settings tables, generated from the programs' settings classes.

    .venv/bin/python -m tools.settings_table           # rewrite the tables in README.md
    .venv/bin/python -m tools.settings_table --check   # exit 1 if README.md is out of date

Each table sits between ``<!-- settings:<program> -->`` and
``<!-- /settings:<program> -->`` and has one row per field: the environment
variable, its type and bounds, the default as the class reports it, and the
field's ``description``. ``tests/unit/test_settings_table.py`` fails when the
README differs from what this renders.
"""

from __future__ import annotations

import argparse
import re
import sys
import types
import typing
from collections.abc import Iterable
from enum import Enum
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from pathlib import Path

import annotated_types
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings

from bonding.config import BondingSettings
from path_controller.config import PathControllerSettings
from tunnel_controller.config import TunnelSettings

README = Path(__file__).resolve().parent.parent / "README.md"
COMMAND = ".venv/bin/python -m tools.settings_table"

# Marker name in README.md -> the settings class of that program.
TABLES: dict[str, type[BaseSettings]] = {
    "bonding": BondingSettings,
    "path-controller": PathControllerSettings,
    "tunnel-controller": TunnelSettings,
}

_TYPE_NAMES: dict[object, str] = {
    bool: "`true`/`false`",
    int: "integer",
    float: "number",
    str: "text",
    Path: "file path",
    IPv6Network: "IPv6 network",
    IPv4Network: "IPv4 network",
    IPv6Address: "IPv6 address",
    IPv4Address: "IPv4 address",
    frozenset({IPv4Network, IPv6Network}): "IP network",
    frozenset({IPv4Address, IPv6Address}): "IP address",
}

_BOUNDS = (
    (annotated_types.Ge, "ge", "≥"),
    (annotated_types.Gt, "gt", ">"),
    (annotated_types.Le, "le", "≤"),
    (annotated_types.Lt, "lt", "<"),
)


class MarkerMissing(ValueError):
    pass


def env_name(settings: type[BaseSettings], name: str, field: FieldInfo) -> str:
    prefix = settings.model_config.get("env_prefix", "") or ""
    return (prefix + (field.alias or name)).upper()


def _is_union(annotation: object) -> bool:
    return typing.get_origin(annotation) in (typing.Union, types.UnionType)


def type_name(annotation: object) -> str:
    """A reader's name for a field's type (``Annotated`` metadata already stripped by pydantic)."""
    if annotation in _TYPE_NAMES:
        return _TYPE_NAMES[annotation]
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return type_name(typing.get_args(annotation)[0])
    if origin is typing.Literal:
        return " \\| ".join(f"`{value}`" for value in typing.get_args(annotation))
    if origin is list:
        item = type_name(typing.get_args(annotation)[0])
        if item == _TYPE_NAMES[str]:
            return "comma list"
        return f"comma list of {item}{'es' if item.endswith('s') else 's'}"
    if _is_union(annotation):
        members = [a for a in typing.get_args(annotation) if a is not type(None)]
        if frozenset(members) in _TYPE_NAMES:
            return _TYPE_NAMES[frozenset(members)]
        return " or ".join(type_name(a) for a in members)
    if isinstance(annotation, type) and issubclass(annotation, Enum):
        return " \\| ".join(f"`{member.value}`" for member in annotation)
    return getattr(annotation, "__name__", str(annotation))


def _validator_names(field: FieldInfo) -> Iterable[str]:
    for item in field.metadata:
        func = getattr(item, "func", None)
        if func is not None:
            yield getattr(func, "__name__", "")


def field_type(field: FieldInfo) -> str:
    annotation = field.annotation
    if _is_union(annotation):
        members = [a for a in typing.get_args(annotation) if a is not type(None)]
        annotation = members[0] if len(members) == 1 else annotation
    text = type_name(annotation)
    # A float parsed by a duration validator takes "4", "500ms", "10m", "1m30s".
    if annotation is float and any("duration" in name for name in _validator_names(field)):
        text = "duration"
    bounds = [
        f"{sign} {getattr(item, attr)}"
        for kind, attr, sign in _BOUNDS
        for item in field.metadata
        if isinstance(item, kind)
    ]
    return ", ".join([text, *bounds])


def _value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Enum):
        return str(value.value)
    if isinstance(value, (list, tuple)):
        return ",".join(_value(item) for item in value)
    return str(value)


def field_default(field: FieldInfo) -> str:
    if field.is_required():
        return "required"
    value = field.get_default(call_default_factory=True)
    if value is None:
        return "unset"
    text = _value(value)
    return f"`{text}`" if text else "empty"


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def table(settings: type[BaseSettings]) -> str:
    """The markdown table of one settings class: one row per field."""
    lines = [
        "| variable | type | default | meaning |",
        "|---|---|---|---|",
    ]
    for name, field in settings.model_fields.items():
        description = _cell(field.description or "")
        lines.append(
            f"| `{env_name(settings, name, field)}` | {field_type(field)} | {field_default(field)} | {description} |"
        )
    return "\n".join(lines)


def _block(marker: str) -> re.Pattern[str]:
    return re.compile(
        rf"(?P<open><!-- settings:{re.escape(marker)} -->)(?P<body>.*?)(?P<close><!-- /settings:{re.escape(marker)} -->)",
        re.DOTALL,
    )


def current_table(text: str, marker: str) -> str:
    """The text between a table's markers in ``text``; MarkerMissing if they are not there."""
    match = _block(marker).search(text)
    if match is None:
        raise MarkerMissing(f"README.md has no <!-- settings:{marker} --> ... <!-- /settings:{marker} --> block")
    return match["body"].strip("\n")


def render(text: str, tables: dict[str, type[BaseSettings]] | None = None) -> str:
    """``text`` with every table between its markers replaced by the generated one."""
    for marker, settings in (TABLES if tables is None else tables).items():
        current_table(text, marker)
        generated = table(settings)
        text = _block(marker).sub(lambda m, body=generated: m["open"] + "\n" + body + "\n" + m["close"], text, count=1)
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tools.settings_table", description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only report whether README.md is up to date")
    parser.add_argument("--readme", type=Path, default=README)
    args = parser.parse_args(argv)
    text = args.readme.read_text()
    try:
        generated = render(text)
    except MarkerMissing as exc:
        print(f"tools.settings_table: {exc}", file=sys.stderr)
        return 2
    if generated == text:
        return 0
    if args.check:
        print(f"tools.settings_table: {args.readme} is out of date; run {COMMAND}", file=sys.stderr)
        return 1
    args.readme.write_text(generated)
    print(f"tools.settings_table: rewrote the settings tables in {args.readme}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
