#!/bin/sh
# Builds the virtual environment that the image ships.
#
#   images/build-venv.sh PYTHON VENV SRC
#
# PYTHON is the interpreter the venv is made with: its path is what the venv's
# bin/python links to, so it must be the runtime image's interpreter path.
# VENV is created (it must not exist); SRC is a copy of the project holding
# pyproject.toml, README.md, the packages and images/requirements.lock.
#
# The Dockerfile's build stage runs exactly this script; so does the smoke
# test (tests/host/test_image.py), with the host's interpreter, into a
# temporary directory. Plain POSIX sh: the build image has no bash.
set -eu

if [ $# -ne 3 ]; then
    echo "usage: $0 PYTHON VENV SRC" >&2
    exit 2
fi
python=$1
venv=$2
src=$3

if [ -e "$venv" ]; then
    echo "$0: $venv exists; refusing to build over it" >&2
    exit 2
fi

pip() {
    "$venv/bin/python" -m pip --disable-pip-version-check --no-input --no-cache-dir "$@"
}

"$python" -m venv "$venv"

# 1. Runtime dependencies and the build backend: exact versions, wheels only,
#    every file checked against its hash (pip refuses anything unpinned).
pip install --require-hashes --only-binary=:all: --no-compile -r "$src/images/requirements.lock"

# 2. The project, built from SRC with that backend (not editable); nothing
#    else is fetched and no dependency is resolved again.
pip install --no-deps --no-build-isolation --no-index --no-compile "$src"

# 3. What only building needed.
pip uninstall --yes --quiet setuptools pip

# 4. Bytecode for all of it. Hash-based and unchecked: valid without source
#    timestamps, so a read-only root filesystem (PYTHONDONTWRITEBYTECODE=1)
#    never has to compile at start-up.
"$venv/bin/python" -m compileall -q -j 0 --invalidation-mode unchecked-hash "$venv/lib"
