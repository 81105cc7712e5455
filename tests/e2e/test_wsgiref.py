"""A plain process: the notify app under wsgiref, with install_signal_handlers() and no hooks."""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from .procs import PYTHON, ROOT, free_port, http_get, running, wait_http
from .sink import Sink

pytestmark = pytest.mark.e2e

APP = ROOT / "tests" / "e2e" / "apps" / "wsgiref_app.py"


@pytest.fixture
def sink() -> Iterator[Sink]:
    with Sink(delay=0.2) as s:  # slow enough that work is still in flight at the signal
        yield s


def _get_json(url: str) -> dict[str, object]:
    status, body = http_get(url)
    assert status == 200, body
    result: dict[str, object] = json.loads(body)
    return result


@pytest.mark.parametrize(
    ("signum", "returncode"),
    [(signal.SIGTERM, -signal.SIGTERM), (signal.SIGINT, 0)],
    ids=["SIGTERM", "SIGINT"],
)
def test_starts_lazily_and_drains_on_signal_before_exiting(
    sink: Sink, tmp_path: Path, signum: signal.Signals, returncode: int
) -> None:
    port = free_port()
    argv = [PYTHON, str(APP), str(port)]
    with running(argv, log=tmp_path / "app.log", env={"SINK_URL": sink.url}) as server:
        base = f"http://127.0.0.1:{port}"
        wait_http(f"{base}/stats", 30, server.proc)
        assert _get_json(f"{base}/stats")["loop_running"] is False  # nothing started it yet
        accepted = sum(bool(_get_json(f"{base}/notify")["accepted"]) for _ in range(30))
        stats = _get_json(f"{base}/stats")
        assert stats["loop_running"] is True
        assert stats["completed"] != 30  # still in flight: the drain has work to do
        server.signal(signum)
        assert server.wait(30) == returncode
        log = server.output()

    assert accepted == 30
    # Drained before exit: every notification reached the sink, none was cancelled.
    assert sink.received == 30
    assert sink.duplicates() == 0
    assert f"{signum.name} received, draining" in log
    assert (
        "accepted=30 completed=30 failed=0 timed_out=0 cancelled=0 dropped_full=0 dropped_closed=0"
        in log
    )
