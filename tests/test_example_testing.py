"""examples/testing: the example tests of a Flask view pass, run as a user would run them."""

from __future__ import annotations

import subprocess
import sys

from .e2e.procs import ROOT


def test_example_flask_view_tests_pass_with_the_plugin() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "examples/testing"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=100,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 passed" in result.stdout, result.stdout
