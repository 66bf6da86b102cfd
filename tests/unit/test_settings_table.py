"""README.md's settings tables are the ones tools.settings_table renders from the settings classes."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import pytest
from pydantic import BeforeValidator, Field

from daemonkit.config import CommaList, EnvSettings
from tools import settings_table

README = Path(__file__).resolve().parents[2] / "README.md"


@pytest.mark.parametrize("marker", sorted(settings_table.TABLES))
def test_readme_table_matches_the_settings_class(marker):
    settings = settings_table.TABLES[marker]
    in_readme = settings_table.current_table(README.read_text(), marker)
    assert in_readme == settings_table.table(settings), (
        f"README.md's {marker} settings table differs from {settings.__module__}.{settings.__qualname__}; "
        f"regenerate it with: {settings_table.COMMAND}"
    )


def test_every_field_of_every_settings_class_has_a_description():
    missing = [
        f"{settings.__qualname__}.{name}"
        for settings in settings_table.TABLES.values()
        for name, field in settings.model_fields.items()
        if not (field.description or "").strip()
    ]
    assert not missing, f"fields without description= (their README row would say nothing): {missing}"


def _parse_duration(value: object) -> object:
    return value


class Example(EnvSettings):
    retries: int = Field(3, ge=1, le=9, description="how often to try")
    hosts: CommaList = Field(default_factory=lambda: ["a", "b"], description="where | to go")
    key_file: Path | None = Field(None, description="the key")
    mode: Literal["fast", "slow"] = Field("fast", description="how")
    wait: Annotated[float, BeforeValidator(_parse_duration)] = Field(4.0, gt=0, description="how long")
    enabled: bool = Field(False, description="on or off")
    name: str = Field(description="required")


def test_a_table_row_shows_variable_type_bounds_default_and_description():
    assert settings_table.table(Example).splitlines() == [
        "| variable | type | default | meaning |",
        "|---|---|---|---|",
        "| `RETRIES` | integer, ≥ 1, ≤ 9 | `3` | how often to try |",
        "| `HOSTS` | comma list | `a,b` | where \\| to go |",
        "| `KEY_FILE` | file path | unset | the key |",
        "| `MODE` | `fast` \\| `slow` | `fast` | how |",
        "| `WAIT` | duration, > 0 | `4.0` | how long |",
        "| `ENABLED` | `true`/`false` | `false` | on or off |",
        "| `NAME` | text | required | required |",
    ]


def test_render_replaces_only_the_text_between_the_markers():
    text = "before\n<!-- settings:example -->\nstale\n<!-- /settings:example -->\nafter\n"
    rendered = settings_table.render(text, {"example": Example})
    assert rendered == (
        "before\n<!-- settings:example -->\n" + settings_table.table(Example) + "\n<!-- /settings:example -->\nafter\n"
    )
    assert settings_table.render(rendered, {"example": Example}) == rendered


def test_a_missing_marker_is_an_error_not_an_empty_table():
    with pytest.raises(settings_table.MarkerMissing, match="settings:example"):
        settings_table.render("no markers here\n", {"example": Example})


def test_check_exits_1_on_a_stale_readme_and_write_fixes_it(tmp_path, monkeypatch):
    monkeypatch.setattr(settings_table, "TABLES", {"example": Example})
    readme = tmp_path / "README.md"
    readme.write_text("<!-- settings:example -->\n| stale |\n<!-- /settings:example -->\n")
    assert settings_table.main(["--check", "--readme", str(readme)]) == 1
    assert settings_table.main(["--readme", str(readme)]) == 0
    assert settings_table.main(["--check", "--readme", str(readme)]) == 0
    assert "| `RETRIES` |" in readme.read_text()
