"""RQ workers with a real Redis: every job's hand-off survives its work horse's exit.

``rq worker --burst`` takes the jobs enqueued before it started and quits when the queue is
empty. :class:`asyncbridge.rq.Worker` forks a work horse per job, which drains after the job;
the sink answers after 0.3 s, and RQ's own horse ``os._exit()``\\ s right after the job, so in the
control (plain ``rq.Worker``) every hand-off is still in flight when its horse dies.
:class:`asyncbridge.rq.SimpleWorker` keeps one loop across jobs and drains once, at the end;
:class:`asyncbridge.rq.SpawnWorker`'s horses are fresh interpreters.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from . import workers
from .apps.worker_common import Ledger, environment, read_ledger
from .procs import PYTHON
from .redis import RedisServer
from .sink import Sink
from .workers import assert_all_received, assert_every_task_ran_once, exits_by_itself

pytestmark = pytest.mark.e2e

SINK_DELAY = 0.3
REPORT = workers.report_pattern(
    r"asyncbridge drain of (?P<where>work horse for job [\w-]+|worker): "
)

redis = workers.redis_fixture
sink = workers.sink_fixture(SINK_DELAY)


def _burst(
    n: int, worker_class: str, redis: RedisServer, sink: Sink, tmp_path: Path
) -> tuple[Ledger, list[dict[str, str]]]:
    """Enqueue ``n`` jobs, run ``rq worker --burst`` until it quits; the ledger and reports."""
    ledger_path = tmp_path / "ledger"
    env = environment(
        redis_url=redis.url,
        sink_url=sink.url,
        ledger=ledger_path,
        adapter=worker_class.startswith("asyncbridge."),
    )
    argv = [
        PYTHON,
        "-m",
        "rq.cli",
        "worker",
        "--burst",
        "--url",
        redis.url,
        "--worker-class",
        worker_class,
        "--name",
        f"abtest-{tmp_path.name}",
        "abtest",
    ]
    log = workers.run_worker(
        ["-m", "tests.e2e.apps.worker_rq", str(n)],
        argv,
        env=env,
        log=tmp_path / "rq.log",
        stop=exits_by_itself,
        sink=sink,
        sink_delay=SINK_DELAY,
    )
    return read_ledger(ledger_path), workers.find_reports(REPORT, log)


def test_rq_worker_horse_drains_before_it_exits(
    redis: RedisServer, sink: Sink, tmp_path: Path
) -> None:
    n = 30
    ledger, reports = _burst(n, "asyncbridge.rq.Worker", redis, sink, tmp_path)
    assert_all_received(n, ledger, sink)
    horses = [r for r in reports if r["where"].startswith("work horse")]
    assert len(horses) == n == len(ledger.pids)  # a horse per job, each drained once
    assert {int(r["pid"]) for r in horses} == set(ledger.pids)
    assert all((r["accepted"], r["completed"]) == ("1", "1") for r in horses), horses
    print(f"\nrq Worker: jobs={n} accepted={n} received={sink.received} lost=0")


def test_rq_simple_worker_drains_once_when_the_burst_ends(
    redis: RedisServer, sink: Sink, tmp_path: Path
) -> None:
    n = 100
    ledger, reports = _burst(n, "asyncbridge.rq.SimpleWorker", redis, sink, tmp_path)
    assert_all_received(n, ledger, sink)
    assert len(ledger.pids) == 1
    assert [(r["where"], r["accepted"], r["completed"]) for r in reports] == [
        ("worker", str(n), str(n))
    ]
    print(f"\nrq SimpleWorker: jobs={n} accepted={n} received={sink.received} lost=0")


def test_rq_spawn_worker_horse_drains_before_it_exits(
    redis: RedisServer, sink: Sink, tmp_path: Path
) -> None:
    n = 4
    ledger, _ = _burst(n, "asyncbridge.rq.SpawnWorker", redis, sink, tmp_path)
    assert_all_received(n, ledger, sink)
    # A horse per job. (A spawned horse is a fresh interpreter without the worker's logging
    # set-up, so its report, like RQ's own horse log lines, goes nowhere.)
    assert len(ledger.pids) == n


def test_control_plain_rq_worker_loses_every_hand_off(
    redis: RedisServer, sink: Sink, tmp_path: Path
) -> None:
    n = 10
    ledger, reports = _burst(n, "rq.Worker", redis, sink, tmp_path)
    assert_every_task_ran_once(n, ledger)
    assert reports == []
    lost = n - sink.received
    assert sink.duplicates() == 0
    # The horse exits right after the job: no 0.3 s post can finish.
    assert lost == n, (sink.received, dict(sink.ids))
    print(f"\nrq control: jobs={n} accepted={n} received={sink.received} lost={lost}")


def test_example_jobs_deliver_every_notification(
    redis: RedisServer, sink: Sink, tmp_path: Path
) -> None:
    n = 5
    code = f"import jobs\nfor i in range({n}):\n    jobs.enqueue(f'e{{i}}')\n"
    argv = [PYTHON, "-m", "rq.cli", "worker", "--burst", "--url", redis.url]
    argv += ["--worker-class", "asyncbridge.rq.Worker", "--name", f"example-{tmp_path.name}"]
    workers.run_example(
        "rq",
        code,
        argv,
        redis=redis,
        sink=sink,
        sink_delay=SINK_DELAY,
        log=tmp_path / "rq.log",
        stop=exits_by_itself,
    )
    assert dict(sink.ids) == {f"e{i}": 1 for i in range(n)}
