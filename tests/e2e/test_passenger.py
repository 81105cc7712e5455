"""asyncbridge under a real Phusion Passenger (Debian's 6.0.17, Standalone, builtin engine).

The app directory holds examples/passenger/passenger_wsgi.py and Passengerfile.json as they are,
with an ``app.py`` that serves tests/e2e/apps/hosts_app.py. Two application processes (one
request at a time each) are recycled by ``max_requests`` and restarted by ``passenger-config
restart-app`` in the middle of the load; the load ends with a burst while the sink takes 3 s per
notification, and ``passenger stop`` follows at once. Every process must drain in its ``atexit``
fallback: the workers' reports, the clients' answers and the sink agree, with no duplicates.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .apps.host_load import Load, reports, skip_unless_ready, summary, wait_reports
from .procs import ROOT, free_port, running, wait_http
from .sink import Sink, wait_until

pytestmark = pytest.mark.e2e

EXAMPLE = ROOT / "examples" / "passenger"
VENV_PYTHON = ROOT / ".artifacts" / "hosts-venv" / "bin" / "python"
PASSENGER = shutil.which("passenger")
PASSENGER_CONFIG = shutil.which("passenger-config")
MAX_REQUESTS = 60  # per process: each recycles during the load


def _skip_reason() -> str | None:
    if PASSENGER is None or PASSENGER_CONFIG is None:
        return "Phusion Passenger is not installed (scripts/test.d/hosts.sh installs Debian's)"
    if not VENV_PYTHON.exists():
        return f"{VENV_PYTHON} is missing (scripts/test.d/hosts.sh builds it)"
    version = subprocess.run(
        [str(VENV_PYTHON), "-c", "import sys; print(sys.version_info >= (3, 12))"],
        capture_output=True,
        text=True,
        timeout=30,
    ).stdout.strip()
    if version != "False":
        return "Debian's Passenger 6.0.17 loader imports `imp`, gone in Python 3.12"
    return None


@pytest.fixture(scope="module")
def passenger() -> str:
    skip_unless_ready("test_passenger", _skip_reason())
    assert PASSENGER is not None
    return PASSENGER


@pytest.fixture
def registry() -> Iterator[Path]:
    """A short instance registry path: Passenger's sockets there must fit in 108 bytes."""
    path = Path(tempfile.mkdtemp(prefix="abp-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def sink() -> Iterator[Sink]:
    with Sink(delay=0.1) as s:
        yield s


def _app_dir(tmp_path: Path, sink: Sink, out: Path) -> Path:
    app = tmp_path / "app"
    app.mkdir()
    for name in ("passenger_wsgi.py", "Passengerfile.json"):
        shutil.copy(EXAMPLE / name, app / name)
    # Passenger puts the app directory first on sys.path and starts each process there.
    (app / "app.py").write_text(
        f"import sys\nsys.path.insert(0, {str(ROOT)!r})\n"
        "from tests.e2e.apps.hosts_app import application\n"
    )
    # Settings in a file: Passenger does not hand the app the environment it was started with.
    (app / "hosts_app.json").write_text(json.dumps({"SINK_URL": sink.url, "OUT_DIR": str(out)}))
    return app


def _kill_leftovers(registry: Path, out: Path, load: Load) -> None:
    """Passenger's watchdog and core daemonize, out of the test's process group."""
    pids = set(load.pids) | set(reports(out))
    for pid_file in registry.glob("*/*.pid"):
        with contextlib.suppress(ValueError, OSError):
            pids.add(int(pid_file.read_text().strip()))
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


def _passenger_config(registry: Path, *args: str) -> str:
    # The instance is found through its registry directory.
    env = {**os.environ, "PASSENGER_INSTANCE_REGISTRY_DIR": str(registry)}
    assert PASSENGER_CONFIG is not None
    done = subprocess.run(
        [PASSENGER_CONFIG, *args], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_recycle_restart_and_stop_with_work_in_flight_lose_nothing(
    passenger: str, sink: Sink, tmp_path: Path, registry: Path
) -> None:
    port, out = free_port(), tmp_path / "out"
    out.mkdir()
    app = _app_dir(tmp_path, sink, out)
    pid_file = tmp_path / "passenger.pid"
    argv = [
        passenger,
        "start",
        str(app),
        "--port",
        str(port),
        "--python",
        str(VENV_PYTHON),
        "--max-requests",
        str(MAX_REQUESTS),
        "--log-file",
        str(tmp_path / "passenger.log"),
        "--pid-file",
        str(pid_file),
        "--instance-registry-dir",
        str(registry),
        "--disable-security-update-check",
        "--disable-anonymous-telemetry",
    ]
    load = Load(f"http://127.0.0.1:{port}")
    started = time.monotonic()
    try:
        with running(argv, log=tmp_path / "passenger.out", cwd=app) as server:
            wait_http(f"{load.base}/stats", 60, server.proc)
            # Passenger spawns processes on demand (min_instances only keeps them when idle):
            # slow requests from 4 clients make it start the second one.
            load.hold = 1.0
            load.fire(4)
            load.hold = 0.02
            load.fire(150)
            before_restart = set(load.pids)
            restarted = time.monotonic()
            assert "Restarting" in _passenger_config(registry, "restart-app", str(app))
            load.fire(150)
            # The restart detached both processes of the first generation: each drained.
            assert before_restart <= set(wait_reports(out, before_restart, 30))
            sink.delay = 3.0
            load.fire(20)  # the burst: its notifications are all in flight at the stop
            stopped = time.monotonic()
            subprocess.run([passenger, "stop", "--pid-file", str(pid_file)], timeout=60, check=True)
            workers = wait_reports(out, load.pids, 45)
            assert server.wait(45) == 0
            assert wait_until(lambda: sink.received >= len(load.answers), 10)
            log = (tmp_path / "passenger.log").read_text(errors="replace")
    finally:
        _kill_leftovers(registry, out, load)

    figures = load.check(sink, workers)
    assert figures["requests"] == 324
    # max_requests recycled processes, and the restart replaced both: many generations.
    assert figures["workers"] >= 324 // MAX_REQUESTS
    assert load.interleavings() > 0  # two processes served side by side
    for w in workers.values():
        # Drained by the core's atexit fallback.
        assert any(f.endswith(":_drain_at_exit") for f in w["stack"]), w["stack"]
        assert w["deadline"] == 20.0  # drain_timeout from examples/passenger/passenger_wsgi.py
    # Drained, not killed: Passenger's watchdog had no process to kill after the stop.
    assert "did not exit in time" not in log
    summary(
        "passenger",
        figures,
        restart_at_s=round(restarted - started, 1),
        stop_drain_s=round(max(w["elapsed"] for w in workers.values()), 2),
        interleavings=load.interleavings(),
        wall_s=round(time.monotonic() - stopped, 1),
    )
