"""asyncbridge under a real Granian (2.x, WSGI, multiprocessing workers forked on Linux).

Granian runs through examples/granian/run.sh (plus a shorter ``--respawn-interval``), with an
``app`` module that serves tests/e2e/apps/hosts_app.py. Its workers end through
multiprocessing, which calls ``os._exit`` after its own finalizers, so Python's ``atexit`` never
runs there: every drain must come from the core's multiprocessing finalizer. A control run
cancels that finalizer and shows what is lost without it.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .apps.host_load import Load, not_installed, reports, skip_unless_ready, summary, wait_reports
from .procs import ROOT, Server, free_port, wait_http
from .sink import Sink, wait_until

pytestmark = pytest.mark.e2e

RUN = ROOT / "examples" / "granian" / "run.sh"
BIN = Path(sys.executable).parent  # the granian command of this virtualenv
RESPAWN_INTERVAL = "1"  # seconds between a new worker's start and the old one's SIGTERM


@pytest.fixture(scope="module")
def granian() -> None:
    skip_unless_ready("test_granian", not_installed("granian", BIN / "granian"))


@pytest.fixture
def sink() -> Iterator[Sink]:
    with Sink(delay=0.1) as s:
        yield s


@contextlib.contextmanager
def _granian(tmp_path: Path, sink: Sink, **env: str) -> Iterator[tuple[Server, Load, Path]]:
    """Granian on a free port, answering; the server, a load on it, and the reports' directory."""
    port, out = free_port(), tmp_path / "out"
    out.mkdir()
    load = Load(f"http://127.0.0.1:{port}", hold=0.02)
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "app.py").write_text("from tests.e2e.apps.hosts_app import application  # noqa: F401\n")
    full_env = {
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYTHONPATH": f"{shim}{os.pathsep}{ROOT}",
        "PORT": str(port),
        "SINK_URL": sink.url,
        "OUT_DIR": str(out),
        **env,
    }
    argv = ["sh", str(RUN), "--respawn-interval", RESPAWN_INTERVAL]
    server = Server(argv, log=tmp_path / "granian.log", env=full_env)
    try:
        wait_http(f"{load.base}/stats", 60, server.proc)
        yield server, load, out
    finally:
        server.stop()


def _worker_pids(log: str) -> list[int]:
    return [int(p) for p in re.findall(r"Spawning worker-\d+ with PID: (\d+)", log)]


def test_reload_and_stop_with_work_in_flight_lose_nothing(
    granian: None, sink: Sink, tmp_path: Path
) -> None:
    with _granian(tmp_path, sink) as (server, load, out):
        load.fire(100)
        first = set(load.pids)
        server.signal(signal.SIGHUP)  # graceful respawn, one worker after the other
        load.fire(100, retry=True)  # served across the reload
        # The reload ends when the last old worker has stopped (SIGTERM waits for that).
        assert wait_until(lambda: server.output().count("Stopped old worker") == 2, 30)
        assert first <= set(wait_reports(out, first, 10))
        load.fire(100, retry=True)
        sink.delay = 3.0
        load.hold = 0.0
        load.fire(20)  # the burst: in flight at the stop
        stopped = time.monotonic()
        server.signal(signal.SIGTERM)
        assert server.wait(60) == 0
        wall = time.monotonic() - stopped
        workers = wait_reports(out, load.pids, 10)
        log = server.output()

    figures = load.check(sink, workers)
    assert figures["requests"] == 320
    assert len(first) == 2 and load.interleavings() > 0  # two workers side by side
    assert set(workers) == set(_worker_pids(log))  # every worker that ever ran drained
    assert len(workers) == 4  # two before the reload, two after
    for w in workers.values():
        # Drained by the core's multiprocessing finalizer, before os._exit; atexit never ran.
        assert "util.py:_run_finalizers" in w["stack"], w["stack"]
        assert "process.py:_bootstrap" in w["stack"]
    summary(
        "granian",
        figures,
        interleavings=load.interleavings(),
        stop_drain_s=round(max(w["elapsed"] for w in workers.values()), 2),
        stop_wall_s=round(wall, 1),
    )


def test_control_without_the_multiprocessing_drain_sigterm_loses_what_is_in_flight(
    granian: None, sink: Sink, tmp_path: Path
) -> None:
    with _granian(tmp_path, sink, HOSTS_APP_NO_MULTIPROCESSING_DRAIN="1") as (server, load, out):
        load.fire(100)
        assert wait_until(lambda: sink.received == 100, 10)  # delivered while running
        sink.delay = 3.0
        load.hold = 0.0
        load.fire(20)
        server.signal(signal.SIGTERM)
        assert server.wait(60) == 0
        log = server.output()
        # The sink holds each post for 3 s; it then finds the sender gone and does not count it.
        assert wait_until(lambda: sink.received + sum(sink.abandoned.values()) == sink.requests, 10)

    # Both workers ran without the drain.
    assert {int(p) for p in re.findall(r"app\[(\d+)\] control: cancelled", log)} == load.pids
    assert len(load.pids) == 2
    accepted = sum(a["accepted"] for a in load.answers)
    assert accepted == 120
    assert reports(out) == {}  # no worker drained: atexit never runs in Granian's workers
    lost = accepted - sink.received
    assert lost == 20  # every notification in flight at the stop
    summary(
        "granian control",
        {"requests": 120, "accepted": accepted, "received": sink.received},
        lost=lost,
        abandoned=sum(sink.abandoned.values()),
    )
