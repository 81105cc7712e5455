"""What the task-worker tests (test_celery, test_rq, test_dramatiq) share.

Each test starts its own Redis and sink (the module fixtures below), sends tasks with a producer
subprocess, runs the worker command as a subprocess until the tasks ran, stops it the way its
users do, waits until the sink has settled every post it got, and reads the workers' shutdown
reports from the log.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from .apps.worker_common import Ledger
from .procs import ROOT, Server, running
from .redis import RedisServer, redis_server
from .sink import Sink, wait_until

__all__ = [
    "assert_all_received",
    "assert_every_task_ran_once",
    "assert_reports_account_for",
    "exits_by_itself",
    "find_reports",
    "redis_fixture",
    "report_pattern",
    "run_example",
    "run_worker",
    "sigterm_when",
    "sink_fixture",
    "tail",
]

_COUNTS = (
    r"accepted=(?P<accepted>\d+) completed=(?P<completed>\d+) failed=(?P<failed>\d+) "
    r"timed_out=(?P<timed_out>\d+) cancelled=(?P<cancelled>\d+)"
)


def report_pattern(prefix: str) -> re.Pattern[str]:
    """The shutdown report's log line after ``prefix`` (a regex): pid and counts as groups."""
    return re.compile(prefix + r"asyncbridge shutdown of pid (?P<pid>\d+) .*?" + _COUNTS)


def find_reports(pattern: re.Pattern[str], log: str) -> list[dict[str, str]]:
    """Every report in ``log``, as its named groups."""
    return [m.groupdict() for m in pattern.finditer(log)]


@pytest.fixture(name="redis")
def redis_fixture(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of the test's own (``redis = workers.redis_fixture`` in a test module)."""
    with redis_server(tmp_path) as server:
        yield server


def sink_fixture(delay: float) -> object:
    """A ``sink`` fixture whose sink answers after ``delay`` s (``sink = sink_fixture(...)``)."""

    @pytest.fixture(name="sink")
    def fixture() -> Iterator[Sink]:
        with Sink(delay=delay) as s:
            yield s

    return fixture


def tail(worker: Server) -> str:
    """The end of a worker's log, for an assertion's message."""
    return worker.output()[-4000:]


def sigterm_when(
    worker: Server,
    done: Callable[[], bool],
    within: float,
    *,
    then: Callable[[Server], None] | None = None,
    exit_codes: tuple[int, ...] = (0,),
) -> str:
    """Wait until ``done()``, SIGTERM the worker (``then`` runs next), let it exit; its log."""
    assert wait_until(done, within), tail(worker)
    worker.signal(signal.SIGTERM)  # a warm shutdown: hand-offs of the last tasks in flight
    if then is not None:
        then(worker)
    assert worker.wait(30) in exit_codes, tail(worker)
    return worker.output()


def exits_by_itself(worker: Server) -> str:
    """Wait for a worker that quits when its queue is empty (``--burst``); its log."""
    assert worker.wait(80) == 0, tail(worker)
    return worker.output()


def run_worker(
    producer: Sequence[str],
    argv: Sequence[str],
    *,
    env: dict[str, str],
    log: Path,
    stop: Callable[[Server], str],
    sink: Sink,
    sink_delay: float,
    cwd: Path = ROOT,
) -> str:
    """Run ``python *producer``, then the worker ``argv`` until ``stop`` ends it; its log.

    Both run in ``cwd`` with ``env``. Returns once every post that reached the sink is answered
    (received) or abandoned, which takes at most the sink's delay.
    """
    done = subprocess.run(
        [sys.executable, *producer],
        cwd=cwd,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    with running(argv, log=log, env=env, cwd=cwd) as worker:
        output = stop(worker)
    assert wait_until(lambda: sink.requests == sink.received + _abandoned(sink), sink_delay + 5)
    return output


def run_example(
    name: str,
    code: str,
    argv: Sequence[str],
    *,
    redis: RedisServer,
    sink: Sink,
    sink_delay: float,
    log: Path,
    stop: Callable[[Server], str],
) -> str:
    """examples/``name``: ``python -c code`` enqueues, the worker ``argv`` runs; its log.

    As :func:`run_worker`, in the example's directory, with the example's environment
    (``REDIS_URL``, ``NOTIFY_URL``).
    """
    env = {"REDIS_URL": redis.url, "NOTIFY_URL": sink.url}
    directory = ROOT / "examples" / name
    return run_worker(
        ["-c", code],
        argv,
        env=env,
        log=log,
        stop=stop,
        sink=sink,
        sink_delay=sink_delay,
        cwd=directory,
    )


def _abandoned(sink: Sink) -> int:
    return sum(sink.abandoned.values())


def assert_every_task_ran_once(n: int, ledger: Ledger) -> None:
    """Tasks ``t0`` to ``t{n-1}`` each ran exactly once, and the bridge accepted each hand-off."""
    assert ledger.runs == {f"t{i}": 1 for i in range(n)}
    assert len(ledger.accepted) == n


def assert_all_received(n: int, ledger: Ledger, sink: Sink) -> None:
    """As :func:`assert_every_task_ran_once`, and the sink received each, once, none abandoned."""
    assert_every_task_ran_once(n, ledger)
    assert dict(sink.ids) == {f"t{i}": 1 for i in range(n)}  # received == accepted, id by id
    assert _abandoned(sink) == 0


def assert_reports_account_for(n: int, reports: Sequence[dict[str, str]]) -> None:
    """Together the shutdown reports accepted and completed all ``n`` hand-offs."""
    assert sum(int(r["accepted"]) for r in reports) == n
    assert sum(int(r["completed"]) for r in reports) == n
