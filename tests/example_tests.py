"""Running an example project's own tests the way a user would: pytest in a fresh interpreter."""

from __future__ import annotations

import subprocess
import sys

from .e2e.procs import ROOT

__all__ = ["assert_example_tests_pass"]


def assert_example_tests_pass(directory: str, passed: int) -> None:
    """Run ``pytest -q examples/<directory>`` from the checkout; all ``passed`` tests must pass.

    Args:
        directory: The example's directory under examples/.
        passed: How many tests pytest must report passed.
    """
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", f"examples/{directory}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=100,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{passed} passed" in result.stdout, result.stdout
