"""The version matrix: the suite on every other supported CPython this machine has.

``scripts/test`` runs the whole suite (end to end, browser, docs, packaging) on the default
Python, 3.11, then ``nox --no-error-on-missing-interpreters``:

- 3.13, the newest supported version, runs the core suite and then the end-to-end tests of the
  servers whose behaviour depends most on the interpreter: fork, signal handlers, a daemon thread
  at exit, ``atexit``. Those are gunicorn (sync, gthread and gevent workers), uWSGI, the wsgiref
  dev server, the demo (Flask under gunicorn, Ctrl-C through a pseudo-terminal) and the
  quickstart's servers (``E2E_SUBSET``). Left to 3.11 alone: the browser tests (one Chromium), the
  hosts that come from Debian with their own Python (Passenger, mod_wsgi), and the task workers
  (Celery, RQ, Dramatiq, with Redis), which together would add several minutes to a README
  command that must stay under about ten on a 2-core machine.
- 3.12 runs the core suite only: between 3.11 and 3.13 it finds what the core suite finds. It
  stays in the matrix although the core's one version branch (eager task start, 3.12+) takes
  the same path on 3.12 and 3.13: the classifiers declare 3.12, so a suite must run on it, and
  with uv making the venv and two xdist processes the core suite costs about 90 s.

Each session's venv is made with uv when nox finds it (the dev group installs it), else with
``venv`` and pip; pytest runs in two pytest-xdist processes (``PYTEST_WORKERS``
changes the number, ``0`` runs in one process), as in ``scripts/test``.

An interpreter that cannot be found is skipped with nox's "Missing interpreters" message.
Python 3.14 cannot be installed on this machine, so it is not in the matrix (see
``docs/python-3.14.md``).
"""

from __future__ import annotations

import os
import re
import subprocess
import tomllib
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

# The versions that also run end-to-end tests, and which ones (see the module docstring).
E2E_ON = ("3.13",)
E2E_SUBSET = (
    "-m",
    "e2e and not browser",
    "tests/e2e/test_gunicorn.py",
    "tests/e2e/test_uwsgi.py",
    "tests/e2e/test_wsgiref.py",
    "tests/e2e/test_demo.py",
    "tests/e2e/test_demo_ctrl_c.py",
    "tests/test_docs.py",
)

# Two pytest-xdist workers, one test file each at a time (module fixtures stay in one process),
# as scripts/test runs the default Python's suite. ``nox -- -n 0`` runs in one process. (Not an
# ASYNCBRIDGE_ variable: the tests' processes inherit it, and asyncbridge warns of unknown ones.)
WORKERS = ("-n", os.environ.get("PYTEST_WORKERS", "2"), "--dist", "loadfile")

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


def test_groups() -> list[str]:
    """The dependency groups the tests need: those ``dev`` includes, but lint and docs.

    Unit tests import the libraries their adapter serves (gunicorn, rq, celery...), so every
    group that ``scripts/test`` installs for tests is installed here too, and a group added to
    ``dev`` later is picked up without a change here.
    """
    with open(Path(__file__).parent / "pyproject.toml", "rb") as f:
        dev = tomllib.load(f)["dependency-groups"]["dev"]
    included = [item["include-group"] for item in dev if isinstance(item, dict)]
    return [group for group in included if group not in {"lint", "docs"}]


def tests(session: nox.Session) -> None:
    """The core suite, then on ``E2E_ON`` versions the end-to-end subset, in editable mode."""
    if session.venv_backend != "uv":
        session.install("pip>=25.1")  # [dependency-groups] support
    groups = [arg for group in test_groups() for arg in ("--group", group)]
    session.install("-e", ".", *groups)
    pytest = ("python", "-m", "pytest", "-q", "-p", "no:cacheprovider", *WORKERS)
    session.run(*pytest, *CORE_SUITE, *session.posargs)
    if session.name.removeprefix("tests-") in E2E_ON:
        session.run(*pytest, *E2E_SUBSET, *session.posargs)


# uv (in the dev group) makes each session's venv in seconds; pip's would take a minute or more.
for _version in PYTHONS:
    nox.session(name=f"tests-{_version}", python=interpreter(_version), venv_backend="uv|venv")(
        tests
    )
