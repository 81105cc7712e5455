"""The version matrix: the core suite on every other supported CPython this machine has.

``scripts/test`` runs the whole suite (end to end, docs, packaging) on the default Python, 3.11,
then ``nox --no-error-on-missing-interpreters``, which runs the core suite here on 3.12 and 3.13.
An interpreter that cannot be found is skipped with nox's "Missing interpreters" message.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import nox

# The versions pyproject's classifiers declare, beyond the default 3.11 that scripts/test uses.
PYTHONS = ("3.12", "3.13")

# Not the end-to-end tests (real servers, a browser), the packaging and type checks, nor the
# benchmark smoke runs: those run once, on the default Python.
CORE_SUITE = (
    "-m",
    "not e2e and not browser",
    "--ignore=tests/e2e",
    "--ignore=tests/test_packaging.py",
    "--ignore=tests/test_types.py",
    "--ignore=tests/test_bench_smoke.py",
)

nox.options.sessions = [f"tests-{version}" for version in PYTHONS]
# Find interpreters on this machine only; never download one.
nox.options.download_python = "never"
# Reinstalling into an existing venv is quick; creating one is not.
nox.options.reuse_venv = "yes"


def _works(candidate: Path, version: str) -> bool:
    # A pyenv shim exists on PATH for every installed version but fails unless that version is
    # selected, so each candidate is asked for its version.
    if not os.access(candidate, os.X_OK):
        return False
    try:
        done = subprocess.run(
            [str(candidate), "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0 and done.stdout.strip() == version


def _patch_level(path: Path) -> tuple[int, ...]:
    match = re.search(r"/versions/(\d+)\.(\d+)\.(\d+)/", str(path))
    return tuple(int(n) for n in match.groups()) if match else (0,)


def interpreter(version: str) -> str:
    """A working ``python<version>`` from PATH or pyenv, else the bare version (nox skips it)."""
    name = f"python{version}"
    candidates = [Path(d) / name for d in os.environ.get("PATH", "").split(os.pathsep) if d]
    pyenv_root = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv"))
    installed = pyenv_root.glob(f"versions/{version}.*/bin/{name}")
    candidates += sorted(installed, key=_patch_level, reverse=True)
    for candidate in candidates:
        if _works(candidate, version):
            return str(candidate)
    return version


def tests(session: nox.Session) -> None:
    """The core suite, with the project installed in editable mode and its test dependencies."""
    session.install("pip>=25.1")  # [dependency-groups] support
    # The e2e group holds the test group plus the packages some unit tests import (gunicorn,
    # gevent, flask...); the end-to-end tests themselves are deselected.
    session.install("-e", ".", "--group", "e2e")
    session.run(
        "python", "-m", "pytest", "-q", "-p", "no:cacheprovider", *CORE_SUITE, *session.posargs
    )


for _version in PYTHONS:
    nox.session(name=f"tests-{_version}", python=interpreter(_version), venv_backend="venv")(tests)
