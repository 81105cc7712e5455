"""Dramatiq with a real Redis broker: 2 worker processes x 2 threads, then SIGTERM.

Each message hands a ``post_json`` to the bridge and returns at once. The sink answers after
6 s, well past the 2.3-3 s a Dramatiq worker process takes from SIGTERM to its exit (its main
loop sleeps for up to a second, then the consumers stop), so a hand-off that the process does
not drain is still in flight when it dies (the sink counts a post only if its sender is still
connected when the answer goes out).

Two controls run the same broker module without the middleware. Since the core registers its
exit drain with ``multiprocessing``'s finalizers (Dramatiq's worker processes end with
``os._exit`` after running them), a plain SIGTERM loses nothing even then. What the middleware
adds shows when a second SIGTERM reaches a worker while it drains (a process manager that
signals every process of the group, an operator who signals again): Dramatiq's "kill" handler
cuts the finalizer's drain short, while the middleware's drain ignores it.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .apps.worker_common import Ledger, environment, read_ledger
from .procs import PYTHON, ROOT, Server, running
from .redis import RedisServer, redis_server
from .sink import Sink, wait_until

pytestmark = pytest.mark.e2e

SINK_DELAY = 6.0
REPORT = re.compile(
    r"Dramatiq worker: asyncbridge shutdown of pid (?P<pid>\d+) .*?accepted=(?P<accepted>\d+) "
    r"completed=(?P<completed>\d+) failed=(?P<failed>\d+) timed_out=(?P<timed_out>\d+) "
    r"cancelled=(?P<cancelled>\d+)"
)


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[RedisServer]:
    with redis_server(tmp_path) as server:
        yield server


@pytest.fixture
def sink() -> Iterator[Sink]:
    with Sink(delay=SINK_DELAY) as s:
        yield s


WORKER_PID = re.compile(r"\[PID (\d+)\] \[MainThread\] \[dramatiq\.WorkerProcess\(\d\)\]")


def _worker_pids(worker: Server) -> set[int]:
    return {int(p) for p in WORKER_PID.findall(worker.output())}


def _drain_began(worker: Server, pid: int, adapter: bool) -> bool:
    log = worker.output()
    if adapter:  # the middleware logs as it starts to drain
        return f"asyncbridge: Dramatiq worker {pid} draining" in log
    # The core's finalizer drains right after the worker has shut down.
    return re.search(rf"\[PID {pid}\] .*Worker has been shut down", log) is not None


def _run(
    n: int,
    redis: RedisServer,
    sink: Sink,
    tmp_path: Path,
    *,
    adapter: bool,
    second_term: bool = False,
) -> tuple[Ledger, list[dict[str, str]]]:
    """Send ``n`` messages, run 2 x 2 workers until all ran, SIGTERM; the ledger and reports.

    With ``second_term``, each worker process gets another SIGTERM half a second into its drain.
    """
    ledger_path = tmp_path / "ledger"
    env = environment(redis_url=redis.url, sink_url=sink.url, ledger=ledger_path, adapter=adapter)
    code = (
        "from tests.e2e.apps.worker_dramatiq import notify\n"
        f"for i in range({n}):\n"
        "    notify.send(f't{i}')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    argv = [PYTHON, "-m", "dramatiq", "tests.e2e.apps.worker_dramatiq", "-p", "2", "-t", "2"]
    with running(argv, log=tmp_path / "dramatiq.log", env=env) as worker:
        assert wait_until(lambda: read_ledger(ledger_path).lines >= n, 40), worker.output()[-4000:]
        worker.signal(signal.SIGTERM)  # the last hand-offs are still in flight
        if second_term:
            assert wait_until(lambda: len(_worker_pids(worker)) == 2, 10), worker.output()[-4000:]
            pids = _worker_pids(worker)
            for pid in sorted(pids):
                began = wait_until(functools.partial(_drain_began, worker, pid, adapter), 20)
                assert began, worker.output()[-4000:]
                time.sleep(0.5)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)
        assert worker.wait(30) in ((0, 1) if second_term else (0,)), worker.output()[-4000:]
        log = worker.output()
    assert wait_until(lambda: sink.requests == sink.received + _abandoned(sink), SINK_DELAY + 5)
    return read_ledger(ledger_path), [m.groupdict() for m in REPORT.finditer(log)]


def _abandoned(sink: Sink) -> int:
    return sum(sink.abandoned.values())


def test_dramatiq_worker_processes_drain_at_sigterm(
    redis: RedisServer, sink: Sink, tmp_path: Path
) -> None:
    n = 200
    ledger, reports = _run(n, redis, sink, tmp_path, adapter=True)
    every_once = {f"t{i}": 1 for i in range(n)}
    assert ledger.runs == every_once  # every message ran exactly once
    assert len(ledger.accepted) == n
    assert dict(sink.ids) == every_once  # received == accepted, no duplicates
    assert _abandoned(sink) == 0
    # Both worker processes drained; their reports account for every hand-off.
    assert len(reports) == 2, reports
    assert {int(r["pid"]) for r in reports} >= set(ledger.pids)
    assert sum(int(r["accepted"]) for r in reports) == n
    assert sum(int(r["completed"]) for r in reports) == n
    print(f"\ndramatiq adapter: messages={n} accepted={n} received={sink.received} lost=0")


def test_control_without_the_middleware_the_core_finalizer_drains_a_plain_sigterm(
    redis: RedisServer, sink: Sink, tmp_path: Path
) -> None:
    n = 20
    ledger, reports = _run(n, redis, sink, tmp_path, adapter=False)
    assert ledger.runs == {f"t{i}": 1 for i in range(n)}
    assert len(ledger.accepted) == n
    assert reports == []  # the middleware's report is absent: the core's finalizer drained
    assert dict(sink.ids) == {f"t{i}": 1 for i in range(n)}
    print(f"\ndramatiq control, one SIGTERM: messages={n} received={sink.received} lost=0")


@pytest.mark.parametrize("adapter", [True, False], ids=["middleware", "control"])
def test_a_second_sigterm_during_the_drain(
    redis: RedisServer, sink: Sink, tmp_path: Path, adapter: bool
) -> None:
    n = 20
    ledger, reports = _run(n, redis, sink, tmp_path, adapter=adapter, second_term=True)
    assert ledger.runs == {f"t{i}": 1 for i in range(n)}
    assert len(ledger.accepted) == n
    assert sink.duplicates() == 0
    lost = n - sink.received
    if adapter:
        assert dict(sink.ids) == {f"t{i}": 1 for i in range(n)}  # the drain ignored it
        assert sum(int(r["completed"]) for r in reports) == n
    else:
        # Dramatiq's handler raised SystemExit inside the finalizer's drain: the posts still
        # in flight died with the process.
        assert lost > 0, (sink.received, dict(sink.ids))
    what = "middleware" if adapter else "control"
    print(f"\ndramatiq {what}, second SIGTERM: messages={n} received={sink.received} lost={lost}")


def test_example_proj_delivers_every_notification(
    redis: RedisServer, sink: Sink, tmp_path: Path
) -> None:
    n = 10
    example = ROOT / "examples" / "dramatiq"
    env = {"REDIS_URL": redis.url, "NOTIFY_URL": sink.url}
    code = (
        f"from proj import order_placed\nfor i in range({n}):\n    order_placed.send(f'e{{i}}')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=example,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    argv = [PYTHON, "-m", "dramatiq", "proj", "--processes", "2", "--threads", "2"]
    with running(argv, log=tmp_path / "dramatiq.log", env=env, cwd=example) as worker:
        assert wait_until(lambda: sink.requests >= n, 40), worker.output()[-4000:]
        worker.signal(signal.SIGTERM)
        assert worker.wait(30) == 0, worker.output()[-4000:]
        log = worker.output()
    assert wait_until(lambda: sink.requests == sink.received + _abandoned(sink), SINK_DELAY + 5)
    assert dict(sink.ids) == {f"e{i}": 1 for i in range(n)}
    assert len(REPORT.findall(log)) == 2  # the middleware drained both processes
