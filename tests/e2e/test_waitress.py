"""asyncbridge under a real Waitress (3.x): one process, request threads, the stop signals.

Each run starts examples/waitress/serve.py (copied next to an ``app.py`` that serves
tests/e2e/apps/hosts_app.py; for the runs without ``install_signal_handlers()`` that line is
removed), sends a load, ends it with a burst while the sink takes 2 s per notification, and
sends the stop signal at once.
"""

from __future__ import annotations

import importlib.util
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .apps.host_load import Load, reports, summary
from .procs import ROOT, Server, free_port, wait_http
from .sink import Sink, wait_until

pytestmark = pytest.mark.e2e

EXAMPLE = ROOT / "examples" / "waitress" / "serve.py"
INSTALL = "    asyncbridge.install_signal_handlers()  # from the main thread, before serving\n"


@pytest.fixture(scope="module")
def waitress() -> None:
    if importlib.util.find_spec("waitress") is None:
        reason = "waitress is not installed (the `hosts` dependency group in pyproject.toml)"
        print(f"SKIP test_waitress: {reason}")
        pytest.skip(reason)


@pytest.fixture
def sink() -> Iterator[Sink]:
    with Sink(delay=0.1) as s:
        yield s


def _serve(tmp_path: Path, sink: Sink, out: Path, port: int, *, installed: bool) -> Server:
    script = EXAMPLE.read_text()
    assert INSTALL in script
    if not installed:
        script = script.replace(INSTALL, "")
    (tmp_path / "serve.py").write_text(script)
    (tmp_path / "app.py").write_text(
        "from tests.e2e.apps.hosts_app import application  # noqa: F401\n"
    )
    env = {"PORT": str(port), "SINK_URL": sink.url, "OUT_DIR": str(out)}
    return Server([sys.executable, str(tmp_path / "serve.py")], log=tmp_path / "out.log", env=env)


def _run(
    tmp_path: Path, sink: Sink, signum: signal.Signals, *, installed: bool
) -> tuple[Load, int, dict[int, dict[str, object]], float]:
    port, out = free_port(), tmp_path / "out"
    out.mkdir()
    load = Load(f"http://127.0.0.1:{port}", hold=0.01)
    server = _serve(tmp_path, sink, out, port, installed=installed)
    try:
        wait_http(f"{load.base}/stats", 30, server.proc)
        load.fire(300, threads=8)
        # Delivered while serving; the burst below is then exactly what is in flight at the stop.
        assert wait_until(lambda: sink.received == 300, 10)
        sink.delay = 2.0
        load.hold = 0.0
        load.fire(20)  # the burst: in flight at the stop
        stopped = time.monotonic()
        server.signal(signum)
        returncode = server.wait(30)
        wall = time.monotonic() - stopped
    finally:
        server.stop()
    return load, returncode, reports(out), wall


@pytest.mark.parametrize(
    ("signum", "installed", "returncode", "path"),
    [
        (signal.SIGTERM, True, -signal.SIGTERM, "_signals.py:"),
        (signal.SIGINT, True, 0, "_signals.py:"),
        (signal.SIGINT, False, 0, ":_drain_at_exit"),
    ],
    ids=["SIGTERM-install_signal_handlers", "SIGINT-install_signal_handlers", "SIGINT-atexit"],
)
def test_stop_with_work_in_flight_loses_nothing(
    waitress: None,
    sink: Sink,
    tmp_path: Path,
    signum: signal.Signals,
    installed: bool,
    returncode: int,
    path: str,
) -> None:
    load, rc, workers, wall = _run(tmp_path, sink, signum, installed=installed)

    assert rc == returncode
    figures = load.check(sink, workers)
    assert figures["requests"] == 320 and figures["workers"] == 1
    (report,) = workers.values()
    stack = report["stack"]
    assert isinstance(stack, list)
    # SIGINT without handlers: Waitress stops serving, Python exits, atexit drains.
    # With install_signal_handlers(): the handler drains before the signal's own action.
    assert any(path in str(frame) for frame in stack), stack
    summary(
        f"waitress {signum.name} installed={installed}",
        figures,
        drain_s=round(float(str(report["elapsed"])), 2),
        stop_wall_s=round(wall, 1),
    )


def test_control_sigterm_without_install_signal_handlers_loses_what_is_in_flight(
    waitress: None, sink: Sink, tmp_path: Path
) -> None:
    load, rc, workers, _wall = _run(tmp_path, sink, signal.SIGTERM, installed=False)

    assert rc == -signal.SIGTERM  # killed by the signal: nothing ran, atexit included
    assert workers == {}
    accepted = sum(a["accepted"] for a in load.answers)
    assert accepted == 320
    # Every post that reached the sink was answered, or found its sender gone (abandoned).
    assert wait_until(lambda: sink.received + sum(sink.abandoned.values()) == sink.requests, 10)
    lost = accepted - sink.received
    assert lost == 20  # every notification in flight at the stop
    summary(
        "waitress control SIGTERM installed=False",
        {"requests": 320, "accepted": accepted, "received": sink.received},
        lost=lost,
        abandoned=sum(sink.abandoned.values()),
    )
