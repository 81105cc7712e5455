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

from pathlib import Path

import pytest

from . import workers
from .apps.worker_common import Ledger, environment, read_ledger
from .procs import PYTHON
from .redis import RedisServer
from .sink import Sink
from .workers import (
    assert_all_received,
    assert_every_task_ran_once,
    assert_reports_account_for,
    find_reports,
    sigterm_when,
)

pytestmark = pytest.mark.e2e

SINK_DELAY = 1.5
REPORT = workers.report_pattern(r"Celery (?P<where>pool|main) process: ")

redis = workers.redis_fixture
sink = workers.sink_fixture(SINK_DELAY)


def _run_worker(
    n: int, redis: RedisServer, sink: Sink, tmp_path: Path, *, adapter: bool
) -> tuple[Ledger, str]:
    """Enqueue ``n`` tasks, run the worker until every task ran, warm-stop it; the ledger, log."""
    ledger_path = tmp_path / "ledger"
    env = environment(redis_url=redis.url, sink_url=sink.url, ledger=ledger_path, adapter=adapter)
    code = (
        "from tests.e2e.apps.worker_celery import notify\n"
        f"for i in range({n}):\n"
        "    notify.delay(f't{i}')\n"
    )
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
    log = workers.run_worker(
        ["-c", code],
        argv,
        env=env,
        log=tmp_path / "celery.log",
        stop=lambda w: sigterm_when(w, lambda: read_ledger(ledger_path).lines >= n, 45),
        sink=sink,
        sink_delay=SINK_DELAY,
    )
    return read_ledger(ledger_path), log


def test_celery_prefork_drains_at_recycling_and_warm_shutdown(
    redis: RedisServer, sink: Sink, tmp_path: Path
) -> None:
    n = 100
    ledger, log = _run_worker(n, redis, sink, tmp_path, adapter=True)
    # Every task ran exactly once; received == accepted, id by id, and nothing arrived twice.
    assert_all_received(n, ledger, sink)
    reports = find_reports(REPORT, log)
    pool = [r for r in reports if r["where"] == "pool"]
    # Every pool child that ran tasks drained and reported (a fresh child that the warm
    # shutdown found idle reports accepted=0); together they account for every hand-off.
    assert {int(r["pid"]) for r in pool if r["accepted"] != "0"} == set(ledger.pids), log[-4000:]
    assert_reports_account_for(n, pool)
    assert sum(int(r["failed"]) + int(r["cancelled"]) for r in pool) == 0
    assert len(ledger.pids) >= n // 5  # children really recycled
    print(f"\ncelery adapter: tasks={n} accepted={n} received={sink.received} lost=0")


def test_control_without_install_loses_hand_offs(
    redis: RedisServer, sink: Sink, tmp_path: Path
) -> None:
    n = 20
    ledger, log = _run_worker(n, redis, sink, tmp_path, adapter=False)
    assert_every_task_ran_once(n, ledger)
    assert not REPORT.search(log)  # nothing drained
    lost = n - sink.received
    assert sink.duplicates() == 0
    assert lost > 0, "without install() the children should have lost hand-offs"
    print(f"\ncelery control: tasks={n} accepted={n} received={sink.received} lost={lost}")


def test_example_proj_delivers_every_notification(
    redis: RedisServer, sink: Sink, tmp_path: Path
) -> None:
    n = 10
    code = (
        f"from proj import order_placed\nfor i in range({n}):\n    order_placed.delay(f'e{{i}}')\n"
    )
    argv = [PYTHON, "-m", "celery", "-A", "proj", "worker", "-P", "prefork", "-c", "2"]
    argv += ["--max-tasks-per-child", "5", "-n", f"example-{tmp_path.name}@127.0.0.1"]
    workers.run_example(
        "celery",
        code,
        argv,
        redis=redis,
        sink=sink,
        sink_delay=SINK_DELAY,
        log=tmp_path / "celery.log",
        stop=lambda w: sigterm_when(w, lambda: sink.requests >= n, 45),
    )
    assert dict(sink.ids) == {f"e{i}": 1 for i in range(n)}
