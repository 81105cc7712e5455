"""The end-to-end helpers themselves: a server's output stays readable after teardown."""

from __future__ import annotations

import time
from pathlib import Path

from tests.e2e.procs import PYTHON, Server, running


def test_output_after_stop_returns_what_the_process_wrote(tmp_path: Path) -> None:
    server = Server(
        [PYTHON, "-c", "print('first line'); print('second line')"],
        log=tmp_path / "tiny.log",
    )
    assert server.wait(30) == 0
    server.stop()
    assert server.output() == "first line\nsecond line\n"
    assert server.output() == "first line\nsecond line\n"


def test_output_after_stop_of_a_process_still_running(tmp_path: Path) -> None:
    script = "import time; print('up', flush=True); time.sleep(60)"
    with running([PYTHON, "-c", script], log=tmp_path / "sleeper.log") as server:
        deadline = time.monotonic() + 30
        while server.output() != "up\n":
            assert time.monotonic() < deadline, f"no output within 30s: {server.output()!r}"
            time.sleep(0.05)
    assert server.proc.returncode is not None
    assert server.output() == "up\n"
