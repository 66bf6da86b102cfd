"""README.md's "Metrics and alerts" against what the daemons export and deploy/monitoring ships."""

from __future__ import annotations

import re

from tests.host.imagebuild import REPO
from tests.host.test_manifests import alert_rules, exported_series

README = REPO / "README.md"
METRIC = re.compile(r"\b((?:path|tunnel)_controller_[a-z_]+)\b")


def readme_section(title: str) -> str:
    text = README.read_text()
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else None]


def family_series() -> set[str]:
    """One name per metric family, as an operator queries it: counters with _total, histograms
    without their _bucket/_sum/_count series, nothing's _created."""
    parts = ("_created", "_bucket", "_sum", "_count")
    return {name for name in exported_series() if not name.endswith(parts)}


def test_readme_names_every_metric_family_and_only_exported_series():
    named = set(METRIC.findall(README.read_text()))
    families = family_series()
    assert len(families) > 20, "the registries look empty: is the collection broken?"
    assert not families - named, f"metrics the README does not list: {sorted(families - named)}"
    assert not named - exported_series(), f"README names metrics nobody exports: {sorted(named - exported_series())}"


def test_readme_alert_table_is_the_rules_deploy_monitoring_ships():
    rows = re.findall(r"^\| `(HAVPN\w+)` \| (.*?) \| (critical|warning|info) \|", readme_section("Metrics and alerts"), re.M)
    in_readme = {name: (severity, set(METRIC.findall(expr))) for name, expr, severity in rows}
    shipped = {r["alert"]: (r["labels"]["severity"], set(METRIC.findall(r["expr"]))) for r in alert_rules()}
    assert shipped, "no rule found in deploy/monitoring"
    assert in_readme == shipped
