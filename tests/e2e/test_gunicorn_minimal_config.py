"""The one-line gunicorn config (docs/examples/gunicorn_conf.py) under a real gunicorn: with a
status directory, its master counts what a SIGKILLed worker lost, as child_exit does."""

from __future__ import annotations

import os
import re
import signal
from pathlib import Path

import pytest

from asyncbridge._publish import read_directory

from .procs import PYTHON, ROOT, free_port, http_get, running, wait_http
from .sink import Sink, wait_until

pytestmark = pytest.mark.e2e

MINIMAL = ROOT / "docs" / "examples" / "gunicorn_conf.py"
APP = "tests.e2e.apps.operators_app:app"
LOST = re.compile(
    r"\[(\d+)\] \[WARNING\] asyncbridge: worker (\d+) ended without draining: at least (\d+) "
    r"accepted jobs unfinished \(lost\)"
)


def test_the_one_line_config_counts_a_killed_workers_losses_in_the_master(
    tmp_path: Path,
) -> None:
    (tmp_path / "gunicorn.conf.py").write_text(MINIMAL.read_text())  # as the docs say: no -c
    status = tmp_path / "status"
    status.mkdir()
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    argv = [PYTHON, "-m", "gunicorn", "--workers", "1", "-b", f"127.0.0.1:{port}", APP]
    argv += ["--chdir", str(ROOT)]
    with Sink(delay=3600) as hanging:
        env = {"ASYNCBRIDGE_STATUS_DIR": str(status), "SLOW_SINK_URL": hanging.url}
        with running(argv, log=tmp_path / "gunicorn.log", env=env, cwd=tmp_path) as server:
            wait_http(base + "/stats", 30, server.proc)
            for _ in range(3):
                assert http_get(base + "/?to=slow", timeout=10)[0] == 200

            def held() -> list[int]:
                return [
                    r.pid for r in read_directory(str(status)).live if r.total().unfinished == 3
                ]

            assert wait_until(lambda: len(held()) == 1 and hanging.requests == 3, 30)
            (victim,) = held()
            os.kill(victim, signal.SIGKILL)
            assert wait_until(lambda: LOST.search(server.output()) is not None, 30)
            server.signal(signal.SIGTERM)
            assert server.wait(40) == 0
            log = server.output()
    assert [m.groups() for m in LOST.finditer(log)] == [(str(server.pid), str(victim), "3")]
    assert read_directory(str(status)).exited.lost == 3
