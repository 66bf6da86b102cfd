"""The example manifests under deploy/, offline: Kubernetes' own schemas
(kubernetes-validate, strict: unknown fields fail), prometheus-operator's
schemas for the PodMonitors and PrometheusRules (an npm package, run by node:
tools/crd-validate), and what the daemons need of them (variable names,
ports, probes, security context, metric names in the alerts)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import latest_version
from prometheus_client import CollectorRegistry

from bonding.config import BondingSettings
from path_controller.config import PathControllerSettings
from path_controller.metrics import PathMetrics
from tests.host.imagebuild import PROGRAMS, REPO
from tunnel_controller.config import TunnelSettings
from steering.metrics import SteeringMetrics
from tunnel_controller.metrics import Metrics as TunnelMetrics

DEPLOY = REPO / "deploy"
CRD_TOOL = REPO / "tools" / "crd-validate"
IMAGE = "ha-vpn-dataplane"
# Oldest Kubernetes the examples are checked against, and the newest that kubernetes-validate knows.
KUBERNETES_VERSIONS = ("1.30.0", latest_version())
MONITORING = "monitoring.coreos.com/v1"
# Variables gardener sets that the programs accept and ignore (README).
IGNORED_VARIABLES = {"IS_HA", "IP_FAMILIES"}
SETTINGS = {"bonding": BondingSettings, "path-controller": PathControllerSettings, "tunnel-controller": TunnelSettings}
HTTP_PORT = 8080  # the daemons' default HTTP_PORT (vpn2's /readyz port)


def kustomization(directory: Path) -> list[Path]:
    spec = yaml.safe_load((directory / "kustomization.yaml").read_text())
    assert set(spec) == {"apiVersion", "kind", "resources"}, "plain resource lists: rendered here without kustomize"
    assert spec["kind"] == "Kustomization"
    return [directory / name for name in spec["resources"]]


def directories() -> list[Path]:
    return sorted(p.parent for p in DEPLOY.glob("*/kustomization.yaml"))


def objects(*names: str) -> list[dict]:
    dirs = [DEPLOY / n for n in names] if names else directories()
    return [doc for d in dirs for path in kustomization(d) for doc in yaml.safe_load_all(path.read_text()) if doc]


def workloads() -> list[dict]:
    return [o for o in objects() if o["kind"] in ("Deployment", "StatefulSet")]


def ours(pod_spec: dict) -> list[tuple[str, dict]]:
    """(program, container) for every container of ours, init containers included."""
    found = []
    for container in pod_spec.get("initContainers", []) + pod_spec["containers"]:
        if container["image"].split(":")[0].rsplit("/", 1)[-1] == IMAGE:
            found.append((container["command"][0], container))
    return found


def test_every_manifest_is_listed_in_its_kustomization():
    assert [d.name for d in directories()] == ["monitoring", "seed", "shoot"]
    for directory in directories():
        listed = {p.name for p in kustomization(directory)}
        present = {p.name for p in directory.glob("*.yaml")} - {"kustomization.yaml"}
        assert listed == present, directory


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_core_objects_match_the_kubernetes_schema(version):
    core = [o for o in objects() if o["apiVersion"] != MONITORING]
    assert {o["kind"] for o in core} == {"Deployment", "StatefulSet"}
    errors = []
    for obj in core:
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            errors.append(f"{obj['kind']}/{obj['metadata']['name']}: {exc.path}: {exc.message}")
    assert not errors, "\n".join(errors)


def monitoring_objects() -> list[dict]:
    found = [o for o in objects() if o["apiVersion"] == MONITORING]
    assert {o["kind"] for o in found} == {"PodMonitor", "PrometheusRule"}
    return found


def test_monitoring_objects_match_prometheus_operator_schema():
    node = shutil.which("node")
    assert node, "node is missing (./scripts/install installs nodejs when the machine has none)"
    assert (CRD_TOOL / "node_modules").is_dir(), "run ./scripts/install (npm ci in tools/crd-validate)"
    proc = subprocess.run([node, str(CRD_TOOL / "validate.mjs")], input=json.dumps(monitoring_objects()),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode in (0, 1), proc.stderr
    results = json.loads(proc.stdout)
    assert len(results) == len(monitoring_objects())
    assert all(not r["errors"] for r in results), results


def declared_fields(kind: str) -> dict:
    """The field tree of a monitoring.coreos.com/v1 kind, read from the npm package's type declaration
    (its schema check accepts unknown fields, which the API server would silently prune)."""
    path = CRD_TOOL / "node_modules" / "@kubernetes-models" / "prometheus-operator" / "monitoring.coreos.com" / "v1" / f"{kind}.d.ts"
    lines = path.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"export interface I{kind} "))
    root: dict = {}
    stack = [root]
    for line in lines[start + 1:]:
        text = line.strip()
        if text == "}":
            break
        match = re.match(r'"([^"]+)"\??: (.*)$', text)
        if match:
            name, rest = match.groups()
            if rest.endswith("{"):  # an object, or an array of objects
                child: dict = {}
                stack[-1][name] = child
                stack.append(child)
            else:
                stack[-1][name] = None  # a leaf, or a type declared elsewhere (metadata)
        elif text.startswith("[key: string]"):
            stack[-1]["*"] = None  # a map: any key
        elif text.startswith("}"):
            stack.pop()
    return root


def unknown_fields(value, tree, path="") -> list[str]:
    if tree is None or not isinstance(value, (dict, list)):
        return []
    if isinstance(value, list):
        return [u for i, item in enumerate(value) for u in unknown_fields(item, tree, f"{path}[{i}]")]
    if "*" in tree:
        return []
    found = []
    for key, item in value.items():
        if key not in tree:
            found.append(f"{path}.{key}")
        else:
            found += unknown_fields(item, tree[key], f"{path}.{key}")
    return found


def test_monitoring_objects_use_only_declared_fields():
    problems = []
    for obj in monitoring_objects():
        tree = declared_fields(obj["kind"])
        assert "spec" in tree and tree["spec"], obj["kind"]
        problems += [f"{obj['kind']}/{obj['metadata']['name']}: {u}" for u in unknown_fields(obj, tree)]
    assert not problems, problems


def exported_series() -> set[str]:
    """Every series name the two daemons can export (counters with _total, histograms with their parts)."""
    registry = CollectorRegistry()
    PathMetrics(registry)
    SteeringMetrics(registry, "path_controller", 2)
    tunnel = TunnelMetrics().registry
    SteeringMetrics(tunnel, "tunnel_controller", 2)
    names = set()
    for reg in (registry, tunnel):
        for family in reg.collect():
            if family.type == "counter":
                names |= {f"{family.name}_total", f"{family.name}_created"}
            elif family.type == "histogram":
                names |= {family.name} | {f"{family.name}_{part}" for part in ("bucket", "sum", "count", "created")}
            else:
                names.add(family.name)
    return names


def alert_rules() -> list[dict]:
    return [r for o in monitoring_objects() if o["kind"] == "PrometheusRule" for g in o["spec"]["groups"] for r in g["rules"]]


def test_alerts_name_only_metrics_the_daemons_export():
    series = exported_series()
    used = set()
    for rule in alert_rules():
        used |= set(re.findall(r"\b((?:path|tunnel)_controller_[a-z_]+)\b", rule["expr"]))
        for text in rule.get("annotations", {}).values():
            used |= set(re.findall(r"\b((?:path|tunnel)_controller_[a-z_]+)\b", text))
    assert used, "no metric found in the rules"
    assert used <= series, sorted(used - series)


def test_alerts_cover_what_an_operator_must_hear_about():
    exprs = " ".join(r["expr"] for r in alert_rules())
    for metric in ("path_controller_no_healthy_path", "path_controller_switches_total",
                   "path_controller_routes_consistent", "tunnel_controller_tunnel_failures_total",
                   "tunnel_controller_announcements_rejected_total", "tunnel_controller_peers_not_ready"):
        assert metric in exprs, metric
    for rule in alert_rules():
        assert re.fullmatch(r"HAVPN[A-Za-z]+", rule["alert"])
        assert rule["labels"]["severity"] in ("critical", "warning", "info")
        assert rule["annotations"]["summary"]


def test_podmonitors_scrape_a_named_port_of_our_containers():
    pods = {tuple(sorted(w["spec"]["selector"]["matchLabels"].items())): w["spec"]["template"] for w in workloads()}
    for monitor in (o for o in monitoring_objects() if o["kind"] == "PodMonitor"):
        template = pods[tuple(sorted(monitor["spec"]["selector"]["matchLabels"].items()))]
        ports = {p["name"]: (program, p["containerPort"]) for program, c in ours(template["spec"]) for p in c.get("ports", [])}
        for endpoint in monitor["spec"]["podMetricsEndpoints"]:
            assert endpoint["port"] in ports
            assert ports[endpoint["port"]][1] == HTTP_PORT
            assert endpoint.get("path", "/metrics") == "/metrics"


def test_containers_of_ours_run_our_programs_with_known_variables():
    seen = set()
    for workload in workloads():
        for program, container in ours(workload["spec"]["template"]["spec"]):
            assert program in PROGRAMS
            seen.add(program)
            known = {name.upper() for name in SETTINGS[program].model_fields} | IGNORED_VARIABLES
            names = [e["name"] for e in container.get("env", [])]
            assert len(names) == len(set(names)), container["name"]
            assert set(names) <= known, f"{container['name']}: unknown {sorted(set(names) - known)}"
            if program == "bonding":
                assert container["command"] == ["bonding", "setup"]
            else:
                assert container["command"] == [program]
    assert seen == set(PROGRAMS)


def env_of(container: dict) -> dict:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def test_downward_api_supplies_pod_name_and_ips():
    for workload in workloads():
        for program, container in ours(workload["spec"]["template"]["spec"]):
            env = env_of(container)
            if program == "bonding":
                assert env["POD_NAME"] == {"fieldRef": {"fieldPath": "metadata.name"}}
            if program == "path-controller":
                assert env["POD_IP"] == {"fieldRef": {"fieldPath": "status.podIP"}}
                assert env["POD_IPS"] == {"fieldRef": {"fieldPath": "status.podIPs"}}


def test_daemons_run_as_root_with_net_admin_only_and_read_only():
    for workload in workloads():
        for program, container in ours(workload["spec"]["template"]["spec"]):
            sc = container["securityContext"]
            assert sc["runAsUser"] == 0 and sc["runAsGroup"] == 0 and sc["runAsNonRoot"] is False
            assert sc["readOnlyRootFilesystem"] is True
            if program == "bonding":
                # /proc/sys is read-only in unprivileged containers (see README, "Deploy").
                assert sc["privileged"] is True
                assert "capabilities" not in sc and "allowPrivilegeEscalation" not in sc
                continue
            assert sc["privileged"] is False and sc["allowPrivilegeEscalation"] is False
            # NET_RAW: the AF_PACKET sockets of server steering (docs/server-steering.md).
            assert sc["capabilities"] == {"drop": ["ALL"], "add": ["NET_ADMIN", "NET_RAW"]}


def test_ping_group_range_admits_the_path_controller_group():
    for workload in workloads():
        spec = workload["spec"]["template"]["spec"]
        programs = {program: c for program, c in ours(spec)}
        if "path-controller" not in programs:
            continue
        sysctls = {s["name"]: s["value"] for s in spec["securityContext"]["sysctls"]}
        low, high = map(int, sysctls["net.ipv4.ping_group_range"].split())
        assert low <= programs["path-controller"]["securityContext"]["runAsGroup"] <= high


def probe_port(container: dict, probe: dict) -> int:
    port = probe["httpGet"]["port"]
    if isinstance(port, str):
        (port,) = [p["containerPort"] for p in container["ports"] if p["name"] == port]
    return port


def test_probes():
    for workload in workloads():
        for program, container in ours(workload["spec"]["template"]["spec"]):
            if program == "bonding":
                assert not {"readinessProbe", "livenessProbe", "startupProbe"} & set(container)
                continue
            live = container["livenessProbe"]
            assert live["httpGet"]["path"] == "/healthz" and probe_port(container, live) == HTTP_PORT
            if program == "path-controller":
                # Deliberately none: it would keep the kube-apiserver pod unready while no
                # vpn-shoot exists yet (shoot creation, wake-up); alerts cover it instead.
                assert "readinessProbe" not in container and "startupProbe" not in container
            if program == "tunnel-controller":
                ready = container["readinessProbe"]
                assert ready["httpGet"]["path"] == "/readyz" and probe_port(container, ready) == HTTP_PORT
                # vpn2's (gardener's) probe parameters.
                assert {k: ready[k] for k in ready if k != "httpGet"} == {
                    "initialDelaySeconds": 5, "periodSeconds": 5, "timeoutSeconds": 2,
                    "successThreshold": 2, "failureThreshold": 1,
                }


def test_resources_fit_a_python_daemon():
    for workload in workloads():
        for program, container in ours(workload["spec"]["template"]["spec"]):
            resources = container["resources"]
            assert "cpu" not in resources.get("limits", {}), "no CPU limit: throttling delays probes"
            # About 50 MiB resident each (README, "Deploy"): vpn2's 20-50Mi limits would kill them.
            assert resources["limits"]["memory"] == "128Mi" and resources["requests"]["memory"] == "64Mi"


def test_vpn_shoot_statefulset_is_vpn2s_shape():
    (sts,) = [w for w in workloads() if w["kind"] == "StatefulSet"]
    assert sts["metadata"]["name"] == "vpn-shoot" and sts["spec"]["replicas"] == 2
    spec = sts["spec"]["template"]["spec"]
    assert [c["name"] for c in spec["initContainers"]] == ["vpn-shoot-init"]
    assert [c["name"] for c in spec["containers"]] == ["vpn-shoot-s0", "vpn-shoot-s1", "tunnel-controller"]
    env = env_of(dict(ours(spec))["bonding"])
    assert env["IS_SHOOT_CLIENT"] == "true"


def test_the_vpn_shoots_openvpn_clients_outlive_the_tunnel_controllers_drain():
    """A planned roll of a vpn-shoot: after SIGTERM its tunnel-controller drains for
    DRAIN_SECONDS (the kube-apiservers send new connections elsewhere) while the open
    ones keep flowing; that needs the OpenVPN clients alive until the drain ends."""
    (shoot,) = [w for w in workloads() if w["metadata"]["name"] == "vpn-shoot"]
    spec = shoot["spec"]["template"]["spec"]
    drain = TunnelSettings.model_fields["drain_seconds"].default
    (tunnel_controller,) = [c for program, c in ours(spec) if program == "tunnel-controller"]
    env = {e["name"]: e.get("value") for e in tunnel_controller.get("env", [])}
    drain = float(env.get("DRAIN_SECONDS", drain))
    clients = [c for c in spec["containers"] if c["name"] in ("vpn-shoot-s0", "vpn-shoot-s1")]
    assert len(clients) == 2
    for client in clients:
        command = client["lifecycle"]["preStop"]["exec"]["command"]
        assert command[0] == "sleep" and float(command[1]) > drain, client["name"]
        assert spec["terminationGracePeriodSeconds"] > float(command[1]) + 5
