"""Release packaging: the sdist and wheel build, carry what they must, and work once installed.

The build and the fresh-venv install take several seconds and need the build backend (fetched
by ``python -m build``), so they are marked ``e2e``: ``-m "not e2e"`` leaves them out. The check
that declared and tested Python versions agree is quick and always runs.
"""

from __future__ import annotations

import ast
import email.message
import email.parser
import os
import re
import subprocess
import sys
import tarfile
import textwrap
import tomllib
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import asyncbridge

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


@dataclass(frozen=True)
class Dists:
    sdist: Path
    wheel: Path


@pytest.fixture(scope="module")
def dists(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dists]:
    out = tmp_path_factory.mktemp("dist")
    done = subprocess.run(
        [sys.executable, "-m", "build", "--outdir", str(out), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=110,
        check=False,
    )
    log = done.stdout + done.stderr
    if done.returncode != 0 and "Could not find a version that satisfies" in log:
        pytest.skip(f"the build backend could not be installed (no package index?): {log[-800:]}")
    assert done.returncode == 0, log
    (sdist,) = out.glob("asyncbridge_loop-*.tar.gz")
    (wheel,) = out.glob("asyncbridge_loop-*.whl")
    yield Dists(sdist, wheel)


def _metadata(wheel: Path) -> email.message.Message:
    with zipfile.ZipFile(wheel) as zf:
        (name,) = [n for n in zf.namelist() if n.endswith(".dist-info/METADATA")]
        return email.parser.Parser().parsestr(zf.read(name).decode())


@pytest.mark.packaging
def test_wheel_ships_the_package_typed_and_licensed(dists: Dists) -> None:
    with zipfile.ZipFile(dists.wheel) as zf:
        names = set(zf.namelist())
    assert "asyncbridge/py.typed" in names
    assert "asyncbridge/__init__.py" in names
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    assert any(n.endswith(".dist-info/entry_points.txt") for n in names)
    # Only the package: no tests, docs or examples inside site-packages.
    assert {n.split("/")[0] for n in names} == {
        "asyncbridge",
        dists.wheel.name.split("-py3")[0] + ".dist-info",
    }


@pytest.mark.packaging
def test_wheel_metadata_is_complete(dists: Dists) -> None:
    meta = _metadata(dists.wheel)
    assert meta["Name"] == PYPROJECT["project"]["name"] == "asyncbridge-loop"
    assert meta["Version"] == asyncbridge.__version__
    assert meta["Summary"]
    assert meta["License-Expression"] == "MIT"
    assert meta["Requires-Python"] == ">=3.11"
    # No required dependency: every one is behind the extra of the adapter that needs it.
    extras = PYPROJECT["project"]["optional-dependencies"]
    assert PYPROJECT["project"]["dependencies"] == []
    assert sorted(meta.get_all("Provides-Extra") or []) == sorted(extras)
    assert all("; extra == " in req for req in meta.get_all("Requires-Dist") or [])
    assert {url.split(",")[0] for url in meta.get_all("Project-URL") or []} >= {
        "Homepage",
        "Documentation",
        "Changelog",
    }
    assert "Typing :: Typed" in (meta.get_all("Classifier") or [])
    assert meta.get_payload()  # the README as the long description


@pytest.mark.packaging
def test_sdist_ships_sources_tests_docs_and_license(dists: Dists) -> None:
    with tarfile.open(dists.sdist) as tf:
        names = {n.split("/", 1)[1] for n in tf.getnames() if "/" in n}
    for required in (
        "LICENSE",
        "README.md",
        "CHANGELOG.md",
        "pyproject.toml",
        "asyncbridge/py.typed",
        "docs/conf.py",
        "docs/index.md",
        "examples/fire_and_forget.py",
        "gunicorn.conf.example.py",
        "tests/test_docs.py",
    ):
        assert required in names, required


SMOKE = textwrap.dedent(
    """
    import asyncio, importlib, inspect, sys, sysconfig
    import asyncbridge

    site = sysconfig.get_paths()["purelib"]
    assert asyncbridge.__file__.startswith(site), (asyncbridge.__file__, site)

    async def job():
        await asyncio.sleep(0)
        return 42

    assert asyncbridge.run_soon(job()) is True
    assert asyncbridge.run(job(), timeout=5) == 42
    report = asyncbridge.shutdown(timeout=5)
    s = report.stats
    assert (s.accepted, s.completed, report.clean) == (2, 2, True), report
    print("core ok:", report)

    try:
        import asyncbridge.aiohttp
    except ModuleNotFoundError as exc:
        assert exc.name == "aiohttp", exc
        print("aiohttp extra needed: ok")
    else:
        raise AssertionError("asyncbridge.aiohttp imported without the aiohttp extra")

    try:
        gunicorn = importlib.import_module("asyncbridge.gunicorn")
    except ModuleNotFoundError as exc:
        if exc.name != "asyncbridge.gunicorn":
            raise
        print("gunicorn hooks: not in this wheel yet")
    else:
        arity = {"post_fork": 2, "worker_exit": 2, "post_worker_init": 1, "worker_int": 1,
                 "worker_abort": 1}
        for name, n in arity.items():
            assert len(inspect.signature(getattr(gunicorn, name)).parameters) == n, name
        assert "gunicorn" not in sys.modules  # the hooks need no gunicorn to import
        print("gunicorn hooks importable: ok")
    """
)


@pytest.mark.packaging
def test_wheel_installs_into_a_fresh_venv_and_works(dists: Dists, tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    # The test venv's pip installs into the fresh one: no network, no dependencies.
    pip = [sys.executable, "-m", "pip", "--python", str(python), "install", "-q"]
    subprocess.run(
        [*pip, "--no-deps", "--no-index", "--disable-pip-version-check", str(dists.wheel)],
        check=True,
        timeout=110,
    )
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    done = subprocess.run(
        [str(python), "-W", "error", "-c", SMOKE],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,  # not the repository, so only the installed copy can be imported
        env=env,
        check=False,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "core ok: asyncbridge shutdown of pid" in output
    assert "aiohttp extra needed: ok" in output
    if "gunicorn hooks: not in this wheel yet" in output:
        pytest.skip("asyncbridge/gunicorn.py does not exist yet; the core smoke check passed")
    assert "gunicorn hooks importable: ok" in output


# -- declared versions agree with tested versions ----------------------------------------------


def _nox_pythons() -> set[str]:
    tree = ast.parse((ROOT / "noxfile.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "PYTHONS" for t in node.targets
        ):
            value = ast.literal_eval(node.value)
            return set(value)
    raise AssertionError("noxfile.py defines no PYTHONS")


def test_declared_python_versions_are_the_tested_ones() -> None:
    project = PYPROJECT["project"]
    prefix = "Programming Language :: Python :: 3."
    declared = {
        c.removeprefix("Programming Language :: Python :: ")
        for c in project["classifiers"]
        if c.startswith(prefix) and c[len(prefix) :].isdigit()
    }
    # scripts/test runs the full suite on the default Python (the minimum, 3.11) and nox the rest.
    assert project["requires-python"] == ">=3.11"
    assert declared == {"3.11"} | _nox_pythons()
    assert min(declared, key=lambda v: tuple(map(int, v.split(".")))) == "3.11"


# -- every install line names this project's distribution --------------------------------------

# `pip install X`, `pip install "X[extra]"`, `uv add X`...: the first requirement after the verb.
_INSTALL = re.compile(
    r"""(?:pip3?|python3? -m pip|uv pip|uv|poetry)\s+(?:install|add)\s+"""
    r"""(?:-[-\w]+(?:[ =]\S+)?\s+)*['"]?(?P<req>[A-Za-z0-9][\w.\-]*)(?P<extra>\[[^\]]*\])?""",
)


def _install_lines() -> list[tuple[str, int, str]]:
    found: list[tuple[str, int, str]] = []
    pages = [ROOT / "README.md", *ROOT.glob("docs/**/*.md"), *ROOT.glob("examples/**/*.md")]
    pages += list(ROOT.glob("asyncbridge/*.py"))
    for page in pages:
        if "_build" in page.parts:
            continue
        for number, line in enumerate(page.read_text().splitlines(), 1):
            for match in _INSTALL.finditer(line):
                req = match["req"]
                # Only lines that install asyncbridge itself (or something that looks like it).
                if req.lower().replace("_", "-").startswith("asyncbridge"):
                    found.append((str(page.relative_to(ROOT)), number, req))
    return found


def test_every_install_line_names_the_distribution_in_pyproject() -> None:
    dist = PYPROJECT["project"]["name"]
    lines = _install_lines()
    assert lines, "no install line found in README.md, docs/ or examples/"
    wrong = [f"{page}:{n}: installs {req!r}" for page, n, req in lines if req != dist]
    # "asyncbridge" alone is another project on the package index (1.0.0, async/sync conversion).
    assert not wrong, f"install lines must name {dist!r}:\n" + "\n".join(wrong)
