"""What the image's own layers weigh and how fast its programs start, measured
on the host without a container engine.

    .venv/bin/python -m benchmarks.image [--runs 20] [--check]

Builds the venv exactly as the image's build stage does (tests/host/imagebuild.py:
the same files, the same images/build-venv.sh), then reports

* its size on disk and as a gzip'd tar (about what its image layer weighs),
* the standard-library bytecode the runtime stage writes by importing the
  three programs once,
* start-up time of each program, from exec to exit (wall clock and CPU): `--help` where it
  exists, and a bad configuration (exit 2) for all three, which imports and
  validates everything a real start does before touching the kernel. With the
  bytecode the image has, and with none at all (every module compiled in
  memory at each start: what a read-only root filesystem costs without it).

Writes results/image.json, with each figure's target (benchmarks/targets.py:
regression bounds, since no issue states an image target); ``--check`` exits 1
when one is missed. The base image itself cannot be measured here; README
("Deploy") gives its estimate and how it was made.
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

from benchmarks import targets
from tests.host import imagebuild

RESULTS = imagebuild.REPO / "results"
IMPORT_ALL = "import bonding.__main__, path_controller.__main__, tunnel_controller.__main__"
CASES = {
    # name: (argv, extra environment)
    "bonding --help": (["bonding", "--help"], {}),
    "path-controller --help": (["path-controller", "--help"], {}),
    "bonding setup, bad config": (["bonding", "setup"], {"IS_SHOOT_CLIENT": "true"}),
    "path-controller, bad config": (["path-controller"], {}),
    "tunnel-controller, bad config": (["tunnel-controller"], {"WATCHDOG_THRESHOLD": "21"}),
}


def du(path: Path) -> int:
    return sum(p.lstat().st_size for p in path.rglob("*") if not p.is_dir())


def gzipped_tar(path: Path) -> int:
    buffer = io.BytesIO()
    with gzip.GzipFile(fileobj=buffer, mode="wb", compresslevel=6, mtime=0) as gz:
        with tarfile.open(fileobj=gz, mode="w") as tar:
            tar.add(path, arcname=path.name)
    return len(buffer.getvalue())


def timed(argv: list[str], env: dict[str, str], runs: int) -> tuple[list[float], list[float]]:
    """Wall-clock and CPU (user + system) seconds of each run. CPU time barely
    depends on what else the machine runs; wall-clock time does."""
    wall, cpu = [], []
    for _ in range(runs):
        start = time.perf_counter()
        proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd="/")
        _, _, usage = os.wait4(proc.pid, 0)
        proc.returncode = 0  # reaped above
        wall.append(time.perf_counter() - start)
        cpu.append(usage.ru_utime + usage.ru_stime)
    return wall, cpu


def stdlib_bytecode(venv: Path, scratch: Path) -> int:
    """Bytes of bytecode for the standard-library modules the three programs import."""
    prefix = scratch / "pycache"
    env = imagebuild.runtime_env(venv, PYTHONDONTWRITEBYTECODE="", PYTHONPYCACHEPREFIX=str(prefix))
    subprocess.run([str(venv / "bin" / "python"), "-c", IMPORT_ALL], env=env, check=True, cwd="/")
    return sum(p.stat().st_size for p in prefix.rglob("*.pyc") if str(venv) not in str(p))


def figures(result: dict) -> dict[str, float]:
    """The figures benchmarks/targets.py has targets for, in their units."""
    return {
        "venv_gzip_tar": result["sizes"]["venv_gzip_tar_bytes"] / (1024 * 1024),
        "startup_cpu_max": 1000 * max(row["cpu_median_s"] for row in result["startup"].values()),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=20, help="start-ups per case (default 20)")
    targets.add_check_option(parser)
    args = parser.parse_args()

    load_before = os.getloadavg()
    scratch = Path(tempfile.mkdtemp(prefix="image-bench-"))
    try:
        built = imagebuild.build_venv(scratch / "root")
        venv = built.venv
        site = next((venv / "lib").glob("python3.*/site-packages"))
        pyc = sum(p.stat().st_size for p in venv.rglob("*.pyc"))
        sizes = {
            "venv_bytes": du(venv),
            "venv_gzip_tar_bytes": gzipped_tar(venv),
            "site_packages_bytes": du(site),
            "venv_bytecode_bytes": pyc,
            "largest": sorted(((p.name, du(p)) for p in site.iterdir() if p.is_dir()), key=lambda x: -x[1])[:5],
            "stdlib_bytecode_bytes": stdlib_bytecode(venv, scratch),
        }
        empty = scratch / "no-bytecode"
        empty.mkdir()
        startup = {}
        for name, (argv, extra) in CASES.items():
            command = [str(venv / "bin" / argv[0]), *argv[1:]]
            wall, cpu = timed(command, imagebuild.runtime_env(venv, **extra), args.runs)
            wall_none, cpu_none = timed(command, imagebuild.runtime_env(venv, PYTHONPYCACHEPREFIX=str(empty), **extra),
                                        args.runs)
            startup[name] = {
                "wall_median_s": statistics.median(wall),
                "wall_max_s": max(wall),
                "cpu_median_s": statistics.median(cpu),
                "no_bytecode_wall_median_s": statistics.median(wall_none),
                "no_bytecode_cpu_median_s": statistics.median(cpu_none),
            }
        result = {
            "python": subprocess.run([str(venv / "bin" / "python"), "-V"], capture_output=True, text=True).stdout.strip(),
            "interpreter": built.python,
            "same_minor_as_image": built.same_minor,
            "machine": f"{platform.machine()}, {os.cpu_count()} cpus, kernel {platform.release()}",
            "runs": args.runs,
            "load": [load_before[0], os.getloadavg()[0]],
            "sizes": sizes,
            "startup": startup,
        }
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    verdicts = targets.evaluate("image", figures(result))
    result["targets"] = targets.as_json(verdicts)
    mib = 1024 * 1024
    print(f"{result['python']} ({result['interpreter']}); {result['machine']}")
    print(f"venv on disk            {sizes['venv_bytes'] / mib:6.1f} MiB (bytecode {sizes['venv_bytecode_bytes'] / mib:.1f} MiB)")
    print(f"venv as gzip'd tar      {sizes['venv_gzip_tar_bytes'] / mib:6.1f} MiB   target "
          f"{targets.target('image', 'venv_gzip_tar').text}")
    print(f"site-packages           {sizes['site_packages_bytes'] / mib:6.1f} MiB: "
          + ", ".join(f"{n} {b / mib:.1f}" for n, b in sizes["largest"]))
    print(f"stdlib bytecode (RUN)   {sizes['stdlib_bytecode_bytes'] / mib:6.1f} MiB")
    print(f"load average (1 min) before/after: {result['load'][0]:.2f} / {result['load'][1]:.2f}")
    print(f"start-up, exec to exit, median of {args.runs}     wall (max)     CPU   | no bytecode: wall    CPU"
          f"   (target: CPU {targets.target('image', 'startup_cpu_max').text} each)")
    for name, row in startup.items():
        print(f"  {name:32s} {row['wall_median_s'] * 1000:5.0f} ms ({row['wall_max_s'] * 1000:4.0f})"
              f" {row['cpu_median_s'] * 1000:5.0f} ms |  {row['no_bytecode_wall_median_s'] * 1000:7.0f} ms"
              f" {row['no_bytecode_cpu_median_s'] * 1000:5.0f} ms")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "image.json").write_text(json.dumps(result, indent=2) + "\n")
    return targets.report(verdicts, args.check)


if __name__ == "__main__":
    sys.exit(main())
