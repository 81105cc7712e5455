"""Celery prefork workers with a real Redis broker: hand-offs survive recycling and warm shutdown.

Each task hands a ``post_json`` to the bridge and returns at once. The sink answers after 1.5 s,
longer than the second a pool child sleeps between ``worker_process_shutdown`` and its
``os._exit``, so a hand-off that the child does not drain is still in flight when it dies (the
sink counts a post only if its sender is still connected when the answer goes out). With
``--max-tasks-per-child 5`` every child recycles after five tasks; the run ends with a warm
shutdown (SIGTERM to the main process).

The control runs the same app without ``asyncbridge.celery.install()``.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from .apps.worker_common import Ledger, environment, read_ledger
from .procs import PYTHON, ROOT, Server, running
from .redis import RedisServer, redis_server
from .sink import Sink, wait_until

pytestmark = pytest.mark.e2e

SINK_DELAY = 1.5
REPORT = re.compile(
    r"Celery (?P<where>pool|main) process: asyncbridge shutdown of pid (?P<pid>\d+) .*?"
    r"accepted=(?P<accepted>\d+) completed=(?P<completed>\d+) failed=(?P<failed>\d+) "
    r"timed_out=(?P<timed_out>\d+) cancelled=(?P<cancelled>\d+)"
)


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[RedisServer]:
    with redis_server(tmp_path) as server:
        yield server


@pytest.fixture
def sink() -> Iterator[Sink]:
    with Sink(delay=SINK_DELAY) as s:
        yield s


def _enqueue(n: int, env: dict[str, str]) -> None:
    code = (
        "from tests.e2e.apps.worker_celery import notify\n"
        f"for i in range({n}):\n"
        "    notify.delay(f't{i}')\n"
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


def _run_worker(
    n: int, redis: RedisServer, sink: Sink, tmp_path: Path, *, adapter: bool
) -> tuple[Ledger, str]:
    """Enqueue ``n`` tasks, run the worker until every task ran, warm-stop it; the ledger, log."""
    ledger_path = tmp_path / "ledger"
    env = environment(redis_url=redis.url, sink_url=sink.url, ledger=ledger_path, adapter=adapter)
    _enqueue(n, env)
    argv = [
        PYTHON,
        "-m",
        "celery",
        "-A",
        "tests.e2e.apps.worker_celery",
        "worker",
        "-P",
        "prefork",
        "-c",
        "2",
        "--max-tasks-per-child",
        "5",
        "-l",
        "info",
        "-n",
        f"abtest-{tmp_path.name}@127.0.0.1",
        "--without-gossip",
        "--without-mingle",
        "--without-heartbeat",
    ]
    with running(argv, log=tmp_path / "celery.log", env=env) as worker:
        assert wait_until(lambda: read_ledger(ledger_path).lines >= n, 45), _tail(worker)
        worker.signal(signal.SIGTERM)  # warm shutdown, hand-offs of the last tasks in flight
        assert worker.wait(30) == 0, _tail(worker)
        log = worker.output()
    # Every post that reached the sink is answered (received) or abandoned within the delay.
    assert wait_until(lambda: sink.requests == sink.received + _abandoned(sink), SINK_DELAY + 5)
    return read_ledger(ledger_path), log


def _abandoned(sink: Sink) -> int:
    return sum(sink.abandoned.values())


def _tail(worker: Server) -> str:
    return worker.output()[-4000:]


def test_celery_prefork_drains_at_recycling_and_warm_shutdown(
    redis: RedisServer, sink: Sink, tmp_path: Path
) -> None:
    n = 100
    ledger, log = _run_worker(n, redis, sink, tmp_path, adapter=True)
    assert ledger.runs == {f"t{i}": 1 for i in range(n)}  # every task ran exactly once
    assert len(ledger.accepted) == n
    # Received == accepted, id by id, and nothing arrived twice.
    assert dict(sink.ids) == {f"t{i}": 1 for i in range(n)}
    assert _abandoned(sink) == 0
    reports = [m.groupdict() for m in REPORT.finditer(log)]
    pool = [r for r in reports if r["where"] == "pool"]
    # Every pool child that ran tasks drained and reported (a fresh child that the warm
    # shutdown found idle reports accepted=0); together they account for every hand-off.
    assert {int(r["pid"]) for r in pool if r["accepted"] != "0"} == set(ledger.pids), log[-4000:]
    assert sum(int(r["accepted"]) for r in pool) == n
    assert sum(int(r["completed"]) for r in pool) == n
    assert sum(int(r["failed"]) + int(r["cancelled"]) for r in pool) == 0
    assert len(ledger.pids) >= n // 5  # children really recycled
    print(f"\ncelery adapter: tasks={n} accepted={n} received={sink.received} lost=0")


def test_control_without_install_loses_hand_offs(
    redis: RedisServer, sink: Sink, tmp_path: Path
) -> None:
    n = 20
    ledger, log = _run_worker(n, redis, sink, tmp_path, adapter=False)
    assert ledger.runs == {f"t{i}": 1 for i in range(n)}
    assert len(ledger.accepted) == n
    assert not REPORT.search(log)  # nothing drained
    lost = n - sink.received
    assert sink.duplicates() == 0
    assert lost > 0, "without install() the children should have lost hand-offs"
    print(f"\ncelery control: tasks={n} accepted={n} received={sink.received} lost={lost}")


def test_example_proj_delivers_every_notification(
    redis: RedisServer, sink: Sink, tmp_path: Path
) -> None:
    n = 10
    example = ROOT / "examples" / "celery"
    env = {"REDIS_URL": redis.url, "NOTIFY_URL": sink.url}
    code = (
        f"from proj import order_placed\nfor i in range({n}):\n    order_placed.delay(f'e{{i}}')\n"
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
    argv = [PYTHON, "-m", "celery", "-A", "proj", "worker", "-P", "prefork", "-c", "2"]
    argv += ["--max-tasks-per-child", "5", "-n", f"example-{tmp_path.name}@127.0.0.1"]
    with running(argv, log=tmp_path / "celery.log", env=env, cwd=example) as worker:
        assert wait_until(lambda: sink.requests >= n, 45), _tail(worker)
        worker.signal(signal.SIGTERM)
        assert worker.wait(30) == 0, _tail(worker)
    assert wait_until(lambda: sink.requests == sink.received + _abandoned(sink), SINK_DELAY + 5)
    assert dict(sink.ids) == {f"e{i}": 1 for i in range(n)}
