"""The loop side's passes: chunks, eager start (Python 3.12+), and a job's own task."""

from __future__ import annotations

import asyncio
import concurrent.futures
import sys
import threading
import time
from typing import Any

import pytest

import asyncbridge
from asyncbridge import _future, _retry, _scheduler

from .helpers import fresh_bridge, sleeper


def _park(bridge: asyncbridge.Bridge) -> threading.Event:
    """Hold the loop in a callback until the returned event is set."""
    entered, release = threading.Event(), threading.Event()

    def hold() -> None:
        entered.set()
        release.wait(10)

    bridge.get_loop().call_soon_threadsafe(hold)
    assert entered.wait(5)
    return release


def test_a_burst_starts_one_chunk_per_pass() -> None:
    # 1,000 coroutines waiting at once: one pass starts _CHUNK of them, the next pass the next
    # _CHUNK, so no more than _CHUNK hold a slot at once even without a concurrency limit.
    n = 1_000
    seen: list[int] = []
    with fresh_bridge(max_pending=n + 10, max_concurrency=None) as bridge:
        bridge.start()
        rt = bridge._rt

        async def job() -> None:
            seen.append(rt.busy)

        release = _park(bridge)
        try:
            for _ in range(n):
                assert bridge.run_soon(job())
        finally:
            release.set()
        deadline = time.monotonic() + 10  # (not drain(): its own pass would start a chunk too)
        while bridge.stats().completed < n and time.monotonic() < deadline:
            time.sleep(0.005)
        stats = bridge.stats()
        assert (stats.accepted, stats.completed, stats.running) == (n, n, 0)
    assert len(seen) == n
    assert max(seen) == _scheduler._CHUNK


def test_a_lane_at_its_limit_starts_work_as_slots_free() -> None:
    # max_concurrency=3 and 50 waiting: every job ends, a pass refills the freed slots, and
    # never more than 3 run at once.
    running: list[int] = []
    now = [0]
    with fresh_bridge(max_concurrency=3) as bridge:

        async def job() -> None:
            now[0] += 1
            running.append(now[0])
            await asyncio.sleep(0.001)
            now[0] -= 1

        for _ in range(50):
            assert bridge.run_soon(job())
        assert bridge.drain(10)
        assert bridge.stats().completed == 50
    assert max(running) == 3 and len(running) == 50


def test_a_future_cancelled_before_its_task_exists_is_counted_cancelled(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # cancel() that lands after the future is marked running but before its task exists asks
    # the loop to cancel the task. A task cancelled before its first step never enters the job
    # wrapper, which then counts nothing (running stuck at 1) and never awaits the coroutine.
    original = _future.BridgeFuture.set_running_or_notify_cancel
    cancels: list[bool] = []

    def running_then_cancelled(self: _future.BridgeFuture[Any]) -> bool:
        started = original(self)
        cancels.append(self.cancel())  # the race's other side, at its worst moment
        return started

    monkeypatch.setattr(
        _future.BridgeFuture, "set_running_or_notify_cancel", running_then_cancelled
    )
    with fresh_bridge() as bridge:
        future = bridge.submit(sleeper(5))
        with pytest.raises(concurrent.futures.CancelledError):
            future.result(5)
        assert cancels == [True]
        assert bridge.drain(5)
        stats = bridge.stats()
        assert (stats.accepted, stats.cancelled, stats.running) == (1, 1, 0)


def test_a_job_has_its_own_task_in_its_first_step() -> None:
    # On 3.12+ the first step runs eagerly, inside the pass that starts it; it must still be
    # its own task (asyncio.timeout, aiohttp's timers and current_task() rely on it) and be
    # known as the lane's job (retrying() gives the slot back through it).
    found: dict[str, Any] = {}
    with fresh_bridge() as bridge:
        lane = bridge.lane("mine", max_concurrency=2)

        async def first_step() -> None:
            task = asyncio.current_task()
            found["task"] = task
            found["lane"] = _scheduler.current_lane()
            async with asyncio.timeout(0.05):
                await asyncio.sleep(5)

        assert lane.run_soon(first_step())
        assert bridge.drain(5)
        stats = lane.stats()
        assert (stats.accepted, stats.failed, stats.running) == (1, 1, 0)
    assert found["task"] is not None
    assert found["lane"] is not None and found["lane"].name == "mine"


def test_a_retry_whose_first_try_fails_at_once_gives_its_slot_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The only slot's job fails its first try before it ever awaits (under eager start, inside
    # the pass that started it); while it sleeps before its second try, the next job runs.
    monkeypatch.setattr(_retry, "_random", lambda: 1.0)  # the first retry waits BASE (0.2 s)
    order: list[str] = []

    async def refused() -> None:
        order.append("try")
        raise ConnectionRefusedError("nobody listens")

    async def other() -> None:
        order.append("other")

    with fresh_bridge() as bridge:
        lane = bridge.lane("one", max_concurrency=1)
        release = _park(bridge)
        try:
            assert lane.run_soon(asyncbridge.retrying(refused, attempts=2, budget=5))
            assert lane.run_soon(other())
        finally:
            release.set()
        assert bridge.drain(5)
        stats = lane.stats()
        assert (stats.accepted, stats.completed, stats.failed, stats.retries) == (2, 1, 1, 1)
    assert order == ["try", "other", "try"]


@pytest.mark.skipif(sys.version_info < (3, 12), reason="eager task start is Python 3.12+")
def test_on_3_12_a_job_that_never_waits_runs_inside_the_pass() -> None:
    # Eager start: a coroutine that ends before its first real wait is done when its pass
    # returns, and never registered as a running task.
    n = 200
    with fresh_bridge(max_pending=n + 10) as bridge:
        bridge.start()
        rt = bridge._rt
        registered: list[int] = []

        async def job() -> None:
            registered.append(len(rt.tasks))

        release = _park(bridge)
        try:
            for _ in range(n):
                bridge.run_soon(job())
        finally:
            release.set()
        assert bridge.drain(5)
        assert bridge.stats().completed == n
        assert rt.tasks == {}
    assert max(registered) == 1  # only the job itself, while it runs


def test_a_task_factory_on_the_loop_is_honoured() -> None:
    # A factory set on the bridge loop (tracing, a custom Task) makes every job's task.
    made: list[str] = []

    def factory(loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> asyncio.Task[Any]:
        made.append(getattr(coro, "__qualname__", "?"))
        return asyncio.Task(coro, loop=loop, **kwargs)

    with fresh_bridge() as bridge:
        bridge.get_loop().call_soon_threadsafe(bridge.get_loop().set_task_factory, factory)
        deadline = time.monotonic() + 5
        while bridge.get_loop().get_task_factory() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        for _ in range(3):
            assert bridge.run_soon(sleeper(0))
        assert bridge.drain(5)
    assert made.count("_job") == 3
