"""asyncbridge under a real Waitress (3.x): one process, request threads, the stop signals.

Each run starts examples/waitress/serve.py (copied next to an ``app.py`` that serves
tests/e2e/apps/hosts_app.py, with its ``asyncbridge.waitress.install()`` line kept, replaced by
``asyncbridge.install_signal_handlers()``, or removed), sends 300 requests, then a burst of 20
while the sink takes 2 s per notification, and 4 requests that are still running (holding for
1 s, handing over at their end) when the stop signal is sent.
"""

from __future__ import annotations

import http.client
import json
import signal
import sys
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from .apps.host_load import Load, not_installed, reports, skip_unless_ready, summary
from .procs import ROOT, Server, free_port, http_get, wait_http
from .sink import Sink, wait_until

pytestmark = pytest.mark.e2e

EXAMPLE = ROOT / "examples" / "waitress" / "serve.py"
INSTALL = "    asyncbridge.waitress.install()  # from the main thread, before serving\n"
SETUPS = {
    "waitress.install": INSTALL,
    "install_signal_handlers": "    asyncbridge.install_signal_handlers()\n",
    "nothing": "",
}
LATE = 4  # requests running at the stop; the pool has 8 threads, so /holding still answers


@pytest.fixture(scope="module")
def waitress() -> None:
    skip_unless_ready("test_waitress", not_installed("waitress"))


@pytest.fixture
def sink() -> Iterator[Sink]:
    with Sink(delay=0.1) as s:
        yield s


@dataclass
class Run:
    load: Load
    late: list[str]  # each running request's outcome: "accepted", "refused" or "cut"
    returncode: int
    workers: dict[int, dict[str, Any]]
    wall: float

    def count(self, outcome: str) -> int:
        return self.late.count(outcome)

    def timings(self) -> dict[str, float]:
        """The one process's drain time and the stop's wall time, for the summary line."""
        (report,) = self.workers.values()
        return {"drain_s": round(report["elapsed"], 2), "stop_wall_s": round(self.wall, 1)}


def _late(base: str) -> str:
    try:
        status, body = http_get(f"{base}/notify?hold=1&late=1", timeout=30)
    except (ConnectionError, http.client.HTTPException):
        return "cut"  # the process died with the request in progress
    assert status == 200, body
    return "accepted" if json.loads(body)["accepted"] else "refused"


def _holding(base: str) -> int:
    return int(json.loads(http_get(f"{base}/holding")[1])["holding"])


def _run(tmp_path: Path, sink: Sink, signum: signal.Signals, setup: str) -> Run:
    script = EXAMPLE.read_text()
    assert INSTALL in script
    (tmp_path / "serve.py").write_text(script.replace(INSTALL, SETUPS[setup]))
    (tmp_path / "app.py").write_text(
        "from tests.e2e.apps.hosts_app import application  # noqa: F401\n"
    )
    port, out = free_port(), tmp_path / "out"
    out.mkdir()
    env = {"PORT": str(port), "SINK_URL": sink.url, "OUT_DIR": str(out)}
    server = Server([sys.executable, str(tmp_path / "serve.py")], log=tmp_path / "out.log", env=env)
    load = Load(f"http://127.0.0.1:{port}", hold=0.01)
    try:
        wait_http(f"{load.base}/stats", 30, server.proc)
        load.fire(300, threads=8)
        # Delivered while serving; the burst below is then exactly what is in flight at the stop.
        assert wait_until(lambda: sink.received == 300, 10)
        sink.delay = 2.0
        load.hold = 0.0
        load.fire(20)
        with ThreadPoolExecutor(LATE) as pool:
            late: list[Future[str]] = [pool.submit(_late, load.base) for _ in range(LATE)]
            assert wait_until(lambda: _holding(load.base) == LATE, 10)
            stopped = time.monotonic()
            server.signal(signum)
            returncode = server.wait(30)
            wall = time.monotonic() - stopped
            outcomes = [f.result(30) for f in late]
    finally:
        server.stop()
    # Every post that reached the sink was answered, or found its sender gone (abandoned).
    assert wait_until(lambda: sink.received + sum(sink.abandoned.values()) == sink.requests, 10)
    return Run(load, outcomes, returncode, reports(out), wall)


@pytest.mark.parametrize(
    ("signum", "setup"),
    [(signal.SIGTERM, "waitress.install"), (signal.SIGINT, "nothing")],
    ids=["SIGTERM-waitress.install", "SIGINT"],
)
def test_stop_lets_running_requests_finish_then_drains_everything(
    waitress: None, sink: Sink, tmp_path: Path, signum: signal.Signals, setup: str
) -> None:
    run = _run(tmp_path, sink, signum, setup)

    assert run.returncode == 0
    # Waitress stopped accepting, waited for the 4 running requests (their hand-offs accepted),
    # returned from serve(); then atexit drained everything.
    assert run.late == ["accepted"] * LATE
    (report,) = run.workers.values()
    assert any(frame.endswith(":_drain_at_exit") for frame in report["stack"]), report["stack"]
    assert report["accepted"] == report["completed"] == 320 + LATE
    assert report["dropped"] == {"full": 0, "closed": 0}
    assert sink.received == 320 + LATE and sink.duplicates() == 0
    summary(
        f"waitress {signum.name} {setup}",
        {"requests": 320 + LATE, "accepted": report["accepted"], "received": sink.received},
        lost=report["accepted"] - sink.received,
        running_at_stop=LATE,
        **run.timings(),
    )


def test_install_signal_handlers_drains_accepted_work_but_refuses_running_requests(
    waitress: None, sink: Sink, tmp_path: Path
) -> None:
    run = _run(tmp_path, sink, signal.SIGTERM, "install_signal_handlers")

    assert run.returncode == -signal.SIGTERM  # drained, then the default action: killed
    figures = run.load.check(sink, run.workers)
    assert figures["accepted"] == figures["received"] == 320
    (report,) = run.workers.values()
    assert any("_signals.py:" in frame for frame in report["stack"]), report["stack"]
    # The drain closed admission inside the handler while request threads still ran: what
    # they handed over then was refused (counted as dropped "closed"), never lost silently.
    assert run.late == ["refused"] * LATE
    assert report["dropped"] == {"full": 0, "closed": LATE}
    summary(
        "waitress SIGTERM install_signal_handlers",
        figures,
        refused=LATE,
        **run.timings(),
    )


def test_control_sigterm_with_nothing_installed_loses_what_is_in_flight(
    waitress: None, sink: Sink, tmp_path: Path
) -> None:
    run = _run(tmp_path, sink, signal.SIGTERM, "nothing")

    assert run.returncode == -signal.SIGTERM  # killed by the signal: nothing ran, atexit neither
    assert run.workers == {}
    assert run.late == ["cut"] * LATE
    accepted = sum(a["accepted"] for a in run.load.answers)
    assert accepted == 320
    lost = accepted - sink.received
    assert lost == 20  # every notification in flight at the stop
    summary(
        "waitress control SIGTERM nothing",
        {"requests": 320 + LATE, "accepted": accepted, "received": sink.received},
        lost=lost,
        cut=LATE,
        abandoned=sum(sink.abandoned.values()),
    )
