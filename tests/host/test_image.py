"""The container image, checked without a container engine (none runs on the
development and CI machines): hadolint on the Dockerfile, shellcheck on the
script it runs, the Dockerfile's promises, the hash-pinned lock, and a smoke
test of the virtual environment the image ships, built by the same script with
the same commands (tests/host/imagebuild.py) and started as the image would.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.host import imagebuild
from tests.host.imagebuild import DOCKERFILE, LOCK, PROGRAMS, REPO, runtime_env

BIN = Path(sys.executable).parent


def tool(name: str) -> str:
    """A linter installed with the test extra (into the venv running pytest)."""
    path = shutil.which(name, path=str(BIN)) or shutil.which(name)
    assert path, f"{name} is missing: it comes with the test extra (./scripts/install)"
    return path


# --- linters -------------------------------------------------------------------


def test_hadolint_finds_nothing():
    proc = subprocess.run(
        [tool("hadolint"), "--no-color", "--failure-threshold", "style", str(DOCKERFILE)],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_shellcheck_finds_nothing_in_the_build_script():
    proc = subprocess.run(
        [tool("shellcheck"), "--shell=sh", str(REPO / "images" / "build-venv.sh")],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


# --- what the Dockerfile promises --------------------------------------------------


def test_build_and_runtime_have_the_same_python():
    plan = imagebuild.build_plan()
    args = imagebuild.build_args()
    minor = imagebuild.runtime_minor(plan)
    # python:3.13-slim-* builds, distroless python3-debian13 (Debian 13's Python 3.13) runs.
    assert re.match(rf"python:{re.escape(minor)}-slim-trixie(@sha256:[0-9a-f]+)?$", args["BUILD_IMAGE"])
    assert re.match(r"gcr\.io/distroless/python3-debian13[:@]", args["RUNTIME_IMAGE"])
    assert minor == "3.13"
    assert plan.interpreter == f"/usr/bin/python{minor}"  # distroless's interpreter path
    assert plan.interpreter_target == f"/usr/local/bin/python{minor}"  # python:*-slim's


def test_runtime_stage_is_the_venv_and_nothing_else():
    final = imagebuild.final_stage()
    keywords = [i.keyword for i in final]
    assert keywords.count("COPY") == 1
    (copy,) = [i for i in final if i.keyword == "COPY"]
    plan = imagebuild.build_plan()
    assert copy.args == f"--from=build {plan.venv} {plan.venv}"
    runs = [i.exec_form() for i in final if i.keyword == "RUN"]
    assert runs and all(r is not None for r in runs), "no shell in the runtime: RUN only in exec form"
    for run in runs:
        assert run[0] == f"{plan.venv}/bin/python"
    env = " ".join(i.args for i in final if i.keyword == "ENV")
    assert "PYTHONDONTWRITEBYTECODE=1" in env  # read-only root filesystem
    assert f'PATH="{plan.venv}/bin:' in env  # command: ["path-controller"]
    assert [i.args for i in final if i.keyword == "USER"] == ["0:0"]
    assert [i.exec_form() for i in final if i.keyword == "ENTRYPOINT"] == [[]]
    assert "CMD" not in keywords


def test_dockerignore_admits_what_the_build_copies_and_no_more():
    allowed = set()
    for line in (REPO / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if line.startswith("!"):
            allowed.add(line[1:].rstrip("/"))
        elif line and not line.startswith("#"):
            assert line in ("*", "**/__pycache__", "**/*.pyc"), f"unexpected .dockerignore pattern {line!r}"
    copied = {source.rstrip("/") for sources, _ in imagebuild.build_plan().copies for source in sources}
    assert copied == allowed


def test_build_copies_every_package_of_the_project():
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    packages = {p.rstrip("*") for p in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]}
    copied = {source.rstrip("/") for sources, _ in imagebuild.build_plan().copies for source in sources}
    assert packages <= copied
    assert set(pyproject["project"]["scripts"]) == set(PROGRAMS)


# --- the lock -----------------------------------------------------------------------


def read_lock() -> dict[str, tuple[str, list[str]]]:
    text = re.sub(r"\\\n", " ", LOCK.read_text())
    pins = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        spec, *hashes = line.split(" --hash=")
        name, _, version = spec.strip().partition("==")
        pins[canonicalize_name(name)] = (version, [h.strip() for h in hashes])
    return pins


def runtime_requirements() -> list[Requirement]:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    return [Requirement(r) for r in pyproject["project"]["dependencies"]]


def test_lock_pins_every_runtime_dependency_within_pyproject_ranges():
    pins = read_lock()
    for requirement in runtime_requirements():
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{name} is not pinned in {LOCK.name}"
        assert requirement.specifier.contains(pins[name][0]), f"{name}=={pins[name][0]} outside {requirement.specifier}"
    build = tomllib.loads((REPO / "pyproject.toml").read_text())["build-system"]["requires"]
    for requirement in map(Requirement, build):
        name = canonicalize_name(requirement.name)
        assert name in pins and requirement.specifier.contains(pins[name][0])
    for name, (version, hashes) in pins.items():
        assert re.fullmatch(r"[0-9][0-9a-z.]*", version), f"{name}: not an exact pin"
        assert hashes and all(re.fullmatch(r"sha256:[0-9a-f]{64}", h) for h in hashes), name


# --- smoke test of the venv the image ships ----------------------------------------


@pytest.fixture(scope="session")
def image_venv(tmp_path_factory):
    root = tmp_path_factory.mktemp("image-build")
    try:
        yield imagebuild.build_venv(root / "root")
    finally:
        shutil.rmtree(root, ignore_errors=True)


def run(built, *argv: str, timeout: float = 60, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(list(argv), env=runtime_env(built.venv, **env), capture_output=True, text=True,
                          timeout=timeout, cwd="/")


def test_venv_links_to_the_runtime_interpreter_path(image_venv):
    minor = imagebuild.runtime_minor(imagebuild.build_plan())
    if not image_venv.same_minor:
        # Still built and started, but with another minor version than the image's.
        print(f"note: smoke venv built with {image_venv.python}, not Python {minor}")
    link = os.readlink(image_venv.venv / "bin" / Path(image_venv.interpreter_link).name)
    assert link == str(image_venv.interpreter_link)
    config = dict(line.split(" = ", 1) for line in (image_venv.venv / "pyvenv.cfg").read_text().splitlines() if " = " in line)
    assert config["home"] == str(image_venv.interpreter_link.parent)
    assert config["include-system-site-packages"] == "false"


def installed(built) -> dict[str, str]:
    proc = run(built, str(built.venv / "bin" / "python"), "-c",
               "import importlib.metadata as m\n"
               "for d in m.distributions(): print(d.metadata['Name'], d.version)")
    assert proc.returncode == 0, proc.stderr
    return {canonicalize_name(line.split()[0]): line.split()[1] for line in proc.stdout.splitlines()}


def test_venv_holds_the_locked_runtime_packages_and_the_project_only(image_venv):
    expected = {name: version for name, (version, _) in read_lock().items() if name != "setuptools"}
    expected["ha-vpn-dataplane"] = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    assert installed(image_venv) == expected  # no pip, setuptools, scapy, pytest


def test_project_is_installed_not_linked(image_venv):
    site = next((image_venv.venv / "lib").glob("python3.*/site-packages"))
    for package in ("announcement", "bonding", "daemonkit", "netlink_adapter", "path_controller", "steering", "tunnel_controller"):
        assert (site / package / "__init__.py").is_file()
    assert not list(site.glob("*.pth")), "an editable install or a path hook"
    assert not list(site.glob("__editable__*"))


def test_every_module_has_unchecked_hash_bytecode(image_venv):
    site = next((image_venv.venv / "lib").glob("python3.*/site-packages"))
    tag = sys.implementation.cache_tag if image_venv.python == sys.executable else None
    missing, wrong_mode = [], []
    for source in site.rglob("*.py"):
        caches = list((source.parent / "__pycache__").glob(f"{source.stem}.{tag or '*'}.pyc"))
        if not caches:
            missing.append(source)
            continue
        flags = int.from_bytes(caches[0].read_bytes()[4:8], "little")
        if flags != 0b01:  # PEP 552: hash-based, source not checked
            wrong_mode.append(caches[0])
    assert not missing, f"{len(missing)} modules without bytecode, e.g. {missing[:3]}"
    assert not wrong_mode, wrong_mode[:3]


def test_console_scripts_run_the_venv_python_without_a_shell(image_venv):
    for program in PROGRAMS:
        first = (image_venv.venv / "bin" / program).read_text().splitlines()[0]
        assert first == f"#!{image_venv.venv}/bin/python", f"{program}: {first}"


HELP = {
    "bonding": ["bonding", "--help"],
    "path-controller": ["path-controller", "--help"],
    "tunnel-controller": ["tunnel-controller", "--help"],
}


@pytest.mark.parametrize(
    "program",
    ["bonding", "path-controller", "tunnel-controller"],
)
def test_help_exits_0(image_venv, program):
    proc = run(image_venv, *HELP[program], timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"usage: {program}")


BAD = {
    # program: (argv, environment, the variable the one line must name)
    "bonding": (["bonding", "setup"], {"IS_SHOOT_CLIENT": "true"}, "POD_NAME"),
    "path-controller": (["path-controller"], {}, "POD_IP"),
    "tunnel-controller": (["tunnel-controller"], {"WATCHDOG_THRESHOLD": "21"}, "WATCHDOG_THRESHOLD"),
}


@pytest.mark.parametrize("program", PROGRAMS)
def test_bad_configuration_exits_2_with_one_line(image_venv, program):
    argv, env, variable = BAD[program]
    proc = run(image_venv, *argv, **env)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.endswith("\n") and proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith(f"{program}: invalid configuration: {variable}: ")


def test_starting_writes_nothing_into_the_venv(image_venv):
    """With bytecode writing allowed, nothing gets written: all of it is already there and valid
    (the image's root filesystem is read-only and PYTHONDONTWRITEBYTECODE=1)."""

    def snapshot():
        return {p: p.stat().st_mtime_ns for p in image_venv.venv.rglob("*")}

    before = snapshot()
    for program in PROGRAMS:
        argv, env, _ = BAD[program]
        proc = run(image_venv, *argv, PYTHONDONTWRITEBYTECODE="", **env)
        assert proc.returncode == 2
    assert snapshot() == before
