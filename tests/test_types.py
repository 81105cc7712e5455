"""Type completeness of the public API, as pyright's ``--verifytypes`` measures it.

Every symbol a user can reach (the package and its public adapter modules) must have a known,
unambiguous type and a docstring: 100%, not "almost".
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
PYRIGHT = Path(sys.executable).with_name("pyright")


@pytest.fixture(scope="module")
def report() -> dict[str, Any]:
    """pyright's JSON report, computed once for the module (it takes several seconds)."""
    if not PYRIGHT.exists():
        pytest.skip(f"pyright is not installed next to {sys.executable}")
    # PYTHONPATH: pyright does not follow the editable install's .pth to the source tree.
    # PATH: pyright resolves imports (Django, RQ, Dramatiq: the adapters' base classes) with the
    # first python on PATH; make it this interpreter (--pythonpath would follow the venv's
    # symlink out of the venv).
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PATH": path}
    argv = [str(PYRIGHT), "--outputjson", "--verifytypes", "asyncbridge", "--ignoreexternal"]
    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=110, cwd=ROOT, env=env, check=False
        )
    except subprocess.TimeoutExpired:
        pytest.skip("pyright did not finish in time (it may be fetching its node runtime)")
    try:
        result: dict[str, Any] = json.loads(done.stdout)
    except json.JSONDecodeError:
        # The pyright wheel runs on node, which it downloads on first use; offline that fails.
        pytest.skip(f"pyright could not run: {(done.stderr or done.stdout)[-500:]}")
    return result


def test_public_api_is_fully_typed_and_documented(report: dict[str, Any]) -> None:
    completeness = report["typeCompleteness"]
    assert completeness["pyTypedPath"].endswith("asyncbridge/py.typed")
    problems = [
        f"{symbol['name']}: {diag['message']}"
        for symbol in completeness["symbols"]
        for diag in symbol.get("diagnostics", [])
        if diag.get("severity") == "error"
    ]
    assert problems == []
    assert completeness["exportedSymbolCounts"]["withAmbiguousType"] == 0
    assert completeness["exportedSymbolCounts"]["withUnknownType"] == 0
    assert completeness["missingFunctionDocStringCount"] == 0
    assert completeness["missingClassDocStringCount"] == 0
    assert completeness["completenessScore"] == 1.0


def test_every_public_module_is_checked(report: dict[str, Any]) -> None:
    checked = {m["name"] for m in report["typeCompleteness"]["modules"]}
    on_disk = {
        "asyncbridge" + ("" if p.stem == "__init__" else "." + p.stem)
        for p in (ROOT / "asyncbridge").glob("*.py")
        if p.stem in ("__init__", "__main__") or not p.stem.startswith("_")
    }
    assert checked == on_disk
