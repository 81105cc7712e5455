"""asyncbridge.rq: the horse's drain deadline, the drain after a job, and SimpleWorker's drain.

The forking worker runs end to end in tests/e2e/test_rq.py; here the drain logic runs in this
process: on a Worker marked as a horse (RQ's own ``perform_job`` stubbed out), and in a real
SimpleWorker working a burst against a real Redis.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import rq
from redis import Redis

import asyncbridge
import asyncbridge.rq
from asyncbridge.pytest_plugin import RecordingBridge
from asyncbridge.rq import HORSE_KILL_GRACE, MARGIN, horse_deadline
from tests.e2e.redis import RedisServer, redis_server

DONE: list[str] = []


async def _note(what: str, delay: float) -> None:
    await asyncio.sleep(delay)
    DONE.append(what)


def job_hand_off(what: str) -> bool:
    """An RQ job (imported by name): hands a 0.2 s coroutine to the default bridge."""
    return asyncbridge.run_soon(_note(what, 0.2))


@pytest.fixture(autouse=True)
def _clear_done() -> Iterator[None]:
    DONE.clear()
    yield
    DONE.clear()


@pytest.mark.parametrize(
    ("drain_timeout", "job_timeout", "elapsed", "expected"),
    [
        (10.0, 180.0, 1.0, 10.0),  # far from RQ's kill: the whole drain_timeout
        (10.0, -1, 5000.0, 10.0),  # a job without a timeout is never killed by RQ
        (10.0, None, 1.0, 10.0),  # None: the queue default of 180 s
        (10.0, 5.0, 55.0, 5.0 + HORSE_KILL_GRACE - 55.0 - MARGIN),  # the kill is near: capped
        (10.0, 5.0, 70.0, 0.0),  # past it: never negative
        (0.0, 180.0, 0.0, 0.0),
    ],
)
def test_horse_deadline_stays_below_rqs_kill(
    drain_timeout: float, job_timeout: float | None, elapsed: float, expected: float
) -> None:
    got = horse_deadline(drain_timeout, job_timeout=job_timeout, elapsed=elapsed)
    assert got == pytest.approx(expected)


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[RedisServer]:
    with redis_server(tmp_path) as server:
        yield server


def _horse(
    redis: RedisServer, monkeypatch: pytest.MonkeyPatch, *, is_horse: bool
) -> asyncbridge.rq.Worker:
    """A real asyncbridge.rq.Worker whose RQ perform_job only hands off a coroutine."""

    def perform_job(self: rq.worker.BaseWorker, job: Any, queue: Any, execution: Any) -> bool:
        return job_hand_off(job.id)

    monkeypatch.setattr(rq.worker.BaseWorker, "perform_job", perform_job)
    worker = asyncbridge.rq.Worker(["abtest"], connection=Redis.from_url(redis.url))
    worker._is_horse = is_horse
    worker.log = logging.getLogger("tests.rq")
    return worker


def _job(timeout: float | None, started_ago: float = 0.0) -> Any:
    started = datetime.datetime.now(datetime.UTC) - datetime.timedelta(seconds=started_ago)
    return SimpleNamespace(id="j1", timeout=timeout, started_at=started)


def test_work_horse_drains_after_the_job(
    redis: RedisServer,
    monkeypatch: pytest.MonkeyPatch,
    asyncbridge_bridge: RecordingBridge,
    caplog: pytest.LogCaptureFixture,
) -> None:
    worker = _horse(redis, monkeypatch, is_horse=True)
    with caplog.at_level(logging.INFO, logger="tests.rq"):
        assert worker.perform_job(_job(180), None, None) is True  # type: ignore[arg-type]
    # perform_job returned only after the hand-off finished: the horse may os._exit now.
    assert DONE == ["j1"]
    stats = asyncbridge_bridge.stats()
    assert (stats.accepted, stats.completed, stats.loop_running) == (1, 1, False)
    assert "asyncbridge drain of work horse for job j1" in caplog.text
    assert "accepted=1 completed=1" in caplog.text


def test_work_horse_drain_is_cut_at_rqs_kill(
    redis: RedisServer, monkeypatch: pytest.MonkeyPatch, asyncbridge_bridge: RecordingBridge
) -> None:
    worker = _horse(redis, monkeypatch, is_horse=True)
    # The job (timeout 1 s) started 59 s ago: RQ kills the horse at 61 s, so no time is left.
    worker.perform_job(_job(1, started_ago=59), None, None)  # type: ignore[arg-type]
    stats = asyncbridge_bridge.stats()
    assert (stats.accepted, stats.completed, stats.cancelled) == (1, 0, 1)
    assert DONE == []


def test_worker_process_itself_does_not_drain_after_a_job(
    redis: RedisServer, monkeypatch: pytest.MonkeyPatch, asyncbridge_bridge: RecordingBridge
) -> None:
    worker = _horse(redis, monkeypatch, is_horse=False)
    worker.perform_job(_job(180), None, None)  # type: ignore[arg-type]
    assert asyncbridge_bridge.stats().loop_running  # still serving: only a horse drains per job
    assert asyncbridge_bridge.drain()
    assert DONE == ["j1"]


def test_simple_worker_drains_when_the_burst_ends(
    redis: RedisServer, asyncbridge_bridge: RecordingBridge, caplog: pytest.LogCaptureFixture
) -> None:
    connection = Redis.from_url(redis.url)
    queue = rq.Queue("abtest", connection=connection)
    for i in range(3):
        queue.enqueue(job_hand_off, f"job{i}")
    worker = asyncbridge.rq.SimpleWorker([queue], connection=connection)
    with caplog.at_level(logging.INFO, logger="rq.worker"):
        assert worker.work(burst=True) is True
    # The jobs returned at once; the three 0.2 s coroutines finished before work() returned.
    assert sorted(DONE) == ["job0", "job1", "job2"]
    stats = asyncbridge_bridge.stats()
    assert (stats.accepted, stats.completed, stats.loop_running) == (3, 3, False)
    assert "asyncbridge drain of worker" in caplog.text


def test_drain_timeout_class_attribute_sets_the_deadline(
    redis: RedisServer, monkeypatch: pytest.MonkeyPatch, asyncbridge_bridge: RecordingBridge
) -> None:
    class Impatient(asyncbridge.rq.Worker):
        drain_timeout = 0.0

    monkeypatch.setattr(
        rq.worker.BaseWorker, "perform_job", lambda self, job, q, e: job_hand_off(job.id)
    )
    worker = Impatient(["abtest"], connection=Redis.from_url(redis.url))
    worker._is_horse = True
    worker.perform_job(_job(180), None, None)  # type: ignore[arg-type]
    stats = asyncbridge_bridge.stats()
    assert (stats.accepted, stats.cancelled) == (1, 1)
