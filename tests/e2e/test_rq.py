"""RQ workers with a real Redis: every job's hand-off survives its work horse's exit.

``rq worker --burst`` takes the jobs enqueued before it started and quits when the queue is
empty. :class:`asyncbridge.rq.Worker` forks a work horse per job, which drains after the job;
the sink answers after 0.3 s, and RQ's own horse ``os._exit()``\\ s right after the job, so in the
control (plain ``rq.Worker``) every hand-off is still in flight when its horse dies.
:class:`asyncbridge.rq.SimpleWorker` keeps one loop across jobs and drains once, at the end;
:class:`asyncbridge.rq.SpawnWorker`'s horses are fresh interpreters.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from .apps.worker_common import Ledger, environment, read_ledger
from .procs import PYTHON, ROOT, running
from .redis import RedisServer, redis_server
from .sink import Sink, wait_until

pytestmark = pytest.mark.e2e

SINK_DELAY = 0.3
REPORT = re.compile(
    r"asyncbridge drain of (?P<where>work horse for job [\w-]+|worker): asyncbridge shutdown of "
    r"pid (?P<pid>\d+) .*?accepted=(?P<accepted>\d+) completed=(?P<completed>\d+) "
    r"failed=(?P<failed>\d+) timed_out=(?P<timed_out>\d+) cancelled=(?P<cancelled>\d+)"
)


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[RedisServer]:
    with redis_server(tmp_path) as server:
        yield server


@pytest.fixture
def sink() -> Iterator[Sink]:
    with Sink(delay=SINK_DELAY) as s:
        yield s


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
    done = subprocess.run(
        [sys.executable, "-m", "tests.e2e.apps.worker_rq", str(n)],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
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
    with running(argv, log=tmp_path / "rq.log", env=env) as worker:
        assert worker.wait(80) == 0, worker.output()[-4000:]
        log = worker.output()
    assert wait_until(lambda: sink.requests == sink.received + _abandoned(sink), SINK_DELAY + 5)
    return read_ledger(ledger_path), [m.groupdict() for m in REPORT.finditer(log)]


def _abandoned(sink: Sink) -> int:
    return sum(sink.abandoned.values())


def _assert_all_received(n: int, ledger: Ledger, sink: Sink) -> None:
    every_once = {f"t{i}": 1 for i in range(n)}
    assert ledger.runs == every_once  # every job ran exactly once
    assert len(ledger.accepted) == n
    assert dict(sink.ids) == every_once  # received == accepted, and no duplicates
    assert _abandoned(sink) == 0


def test_rq_worker_horse_drains_before_it_exits(
    redis: RedisServer, sink: Sink, tmp_path: Path
) -> None:
    n = 30
    ledger, reports = _burst(n, "asyncbridge.rq.Worker", redis, sink, tmp_path)
    _assert_all_received(n, ledger, sink)
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
    _assert_all_received(n, ledger, sink)
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
    _assert_all_received(n, ledger, sink)
    # A horse per job. (A spawned horse is a fresh interpreter without the worker's logging
    # set-up, so its report, like RQ's own horse log lines, goes nowhere.)
    assert len(ledger.pids) == n


def test_control_plain_rq_worker_loses_every_hand_off(
    redis: RedisServer, sink: Sink, tmp_path: Path
) -> None:
    n = 10
    ledger, reports = _burst(n, "rq.Worker", redis, sink, tmp_path)
    assert ledger.runs == {f"t{i}": 1 for i in range(n)}
    assert len(ledger.accepted) == n
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
    example = ROOT / "examples" / "rq"
    env = {"REDIS_URL": redis.url, "NOTIFY_URL": sink.url}
    code = f"import jobs\nfor i in range({n}):\n    jobs.enqueue(f'e{{i}}')\n"
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
    argv = [PYTHON, "-m", "rq.cli", "worker", "--burst", "--url", redis.url]
    argv += ["--worker-class", "asyncbridge.rq.Worker", "--name", f"example-{tmp_path.name}"]
    with running(argv, log=tmp_path / "rq.log", env=env, cwd=example) as worker:
        assert worker.wait(80) == 0, worker.output()[-4000:]
    assert wait_until(lambda: sink.requests == sink.received + _abandoned(sink), SINK_DELAY + 5)
    assert dict(sink.ids) == {f"e{i}": 1 for i in range(n)}
