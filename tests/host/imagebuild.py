"""The image's build, replayed on the host without a container engine.

The Dockerfile's build stage copies a fixed set of files into /src and runs
``images/build-venv.sh``; :func:`build_venv` reads those COPY lines from the
Dockerfile, copies the same files into a temporary /src, points a symlink at
the runtime's interpreter path (as the stage's ``ln -s`` does) and runs the
same script. Used by ``tests/host/test_image.py`` and ``benchmarks/image.py``.
"""

from __future__ import annotations

import glob
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "images" / "Dockerfile"
LOCK = REPO / "images" / "requirements.lock"
# The three commands the image runs (pyproject.toml's console scripts).
PROGRAMS = ("bonding", "path-controller", "tunnel-controller")


@dataclass(frozen=True)
class Instruction:
    stage: str  # the stage's name, or its index as text when unnamed
    keyword: str  # upper case
    args: str  # the rest of the line, continuation lines joined

    def exec_form(self) -> list[str] | None:
        """The JSON array of an exec-form RUN/ENTRYPOINT/CMD, else None."""
        if self.args.startswith("["):
            return json.loads(self.args)
        return None


def instructions(path: Path = DOCKERFILE) -> list[Instruction]:
    """The Dockerfile's instructions, continuation lines joined, comments dropped.

    Instructions before the first FROM belong to stage "-1"; a stage is named
    by its ``AS`` name, else by its index.
    """
    result: list[Instruction] = []
    stage, index = "-1", -1
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, args = (pending + line).partition(" ")
        pending = ""
        keyword, args = keyword.upper(), " ".join(args.split())
        if keyword == "FROM":
            index += 1
            words = args.split()
            stage = words[2] if len(words) >= 3 and words[1].upper() == "AS" else str(index)
        result.append(Instruction(stage, keyword, args))
    return result


def stage(name: str, path: Path = DOCKERFILE) -> list[Instruction]:
    return [i for i in instructions(path) if i.stage == name]


def final_stage(path: Path = DOCKERFILE) -> list[Instruction]:
    every = instructions(path)
    last = every[-1].stage
    return [i for i in every if i.stage == last]


def build_args(path: Path = DOCKERFILE) -> dict[str, str]:
    """Global ARGs (before the first FROM) with their defaults."""
    args = {}
    for instr in instructions(path):
        if instr.stage != "-1":
            break
        if instr.keyword == "ARG" and "=" in instr.args:
            name, _, value = instr.args.partition("=")
            args[name] = value
    return args


@dataclass(frozen=True)
class BuildPlan:
    workdir: str  # WORKDIR of the build stage (/src)
    copies: list[tuple[list[str], str]]  # (sources, destination) of each COPY
    interpreter: str  # the runtime interpreter path the venv is made with
    interpreter_target: str  # what the stage's symlink at that path points to
    venv: str  # where the venv is built (/opt/venv)
    script: list[str]  # the RUN that builds it, as words


def build_plan(path: Path = DOCKERFILE) -> BuildPlan:
    build = stage("build", path)
    workdir = next(i.args for i in build if i.keyword == "WORKDIR")
    copies = []
    for instr in build:
        if instr.keyword == "COPY":
            words = shlex.split(instr.args)
            assert not any(w.startswith("--") for w in words), f"unexpected COPY flags: {instr.args}"
            copies.append((words[:-1], words[-1]))
    runs = [shlex.split(i.args) for i in build if i.keyword == "RUN"]
    links = [r for r in runs if r[:2] == ["ln", "-s"]]
    builds = [r for r in runs if r and r[0].endswith("build-venv.sh")]
    assert len(links) == 1 and len(builds) == 1, f"expected one ln -s and one build-venv.sh RUN, got {runs}"
    (_, _, target, link), script = links[0], builds[0]
    assert script[1] == link, "the venv must be made with the interpreter path the symlink provides"
    return BuildPlan(workdir, copies, link, target, script[2], script)


def _version_of(python: str) -> str | None:
    try:
        proc = subprocess.run([python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                              capture_output=True, text=True, timeout=30)
    except OSError:
        return None
    return proc.stdout.strip() if proc.returncode == 0 else None


def find_python(minor: str) -> str | None:
    """A working interpreter of that minor version on this host (PATH, then pyenv), if any."""
    pyenv_root = os.environ.get("PYENV_ROOT", os.path.expanduser("~/.pyenv"))
    candidates = [shutil.which(f"python{minor}")]
    candidates += sorted(glob.glob(f"{pyenv_root}/versions/{minor}.*/bin/python{minor}"), reverse=True)
    for candidate in filter(None, candidates):
        if _version_of(candidate) == minor:  # a pyenv shim without that version selected fails here
            return candidate
    return None


def runtime_minor(plan: BuildPlan) -> str:
    match = re.search(r"python(\d+\.\d+)$", plan.interpreter)
    assert match, plan.interpreter
    return match.group(1)


def host_python(plan: BuildPlan) -> tuple[str, bool]:
    """(interpreter, same minor as the image's); SMOKE_PYTHON overrides."""
    override = os.environ.get("SMOKE_PYTHON")
    if override:
        return override, _version_of(override) == runtime_minor(plan)
    same = find_python(runtime_minor(plan))
    if same:
        return same, True
    return sys.executable, f"{sys.version_info[0]}.{sys.version_info[1]}" == runtime_minor(plan)


@dataclass(frozen=True)
class BuiltVenv:
    root: Path  # stands for the build container's /
    venv: Path
    interpreter_link: Path  # stands for /usr/bin/python3.X
    python: str  # the host interpreter it points to
    same_minor: bool  # the host interpreter has the image's minor version
    log: str


def build_venv(root: Path, python: str | None = None) -> BuiltVenv:
    """Replay the build stage under ``root`` (an empty directory)."""
    plan = build_plan()
    if python is None:
        python, same_minor = host_python(plan)
    else:
        same_minor = True
    src = root / plan.workdir.lstrip("/")
    src.mkdir(parents=True)
    for sources, destination in plan.copies:
        assert destination.endswith("/"), f"COPY destinations are directories here: {destination}"
        dest = src / destination
        dest.mkdir(parents=True, exist_ok=True)
        for source in sources:
            origin = REPO / source
            if origin.is_dir():
                shutil.copytree(origin, dest, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"), dirs_exist_ok=True)
            else:
                shutil.copy2(origin, dest / origin.name)
    link = root / plan.interpreter.lstrip("/")
    link.parent.mkdir(parents=True)
    link.symlink_to(python)
    venv = root / plan.venv.lstrip("/")
    words = [str(src / plan.script[0]), str(link), str(venv), str(src)]
    proc = subprocess.run(["sh", *words], cwd=src, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"build-venv.sh failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return BuiltVenv(root, venv, link, python, same_minor, proc.stdout + proc.stderr)


def runtime_env(venv: Path, **extra: str) -> dict[str, str]:
    """The image's environment (ENV lines), with the venv at ``venv``."""
    env = {"PATH": f"{venv}/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8",
           "PYTHONDONTWRITEBYTECODE": "1", "PYTHONUNBUFFERED": "1"}
    env.update(extra)
    return env
