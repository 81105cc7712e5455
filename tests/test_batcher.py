"""asyncbridge.batcher: size and delay triggers, exact item counts, failures, shutdown, fork."""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import os
import threading
import time
from collections.abc import Iterator
from typing import cast

import pytest

import asyncbridge
from asyncbridge import BacklogFull, Bridge

from .helpers import FORK_WARNING, assert_invariant, fresh_bridge, wait_child


class Recorder:
    """A flush that records each batch (and when it started)."""

    def __init__(self, *, fail_on: object = None, hold: threading.Event | None = None) -> None:
        self.batches: list[list[object]] = []
        self.started: list[float] = []
        self.fail_on = fail_on
        self.hold = hold
        self.lock = threading.Lock()

    async def __call__(self, items: list[object]) -> None:
        with self.lock:
            self.started.append(time.monotonic())
        # A threading.Event, set by the test's thread: polled, since asyncio cannot wait on it.
        while self.hold is not None and not self.hold.is_set():  # noqa: ASYNC110
            await asyncio.sleep(0.005)
        await asyncio.sleep(0)
        with self.lock:
            self.batches.append(list(items))
        if self.fail_on is not None and self.fail_on in items:
            raise ConnectionRefusedError(f"batch with {self.fail_on!r} refused")

    @property
    def items(self) -> list[object]:
        with self.lock:
            return [item for batch in self.batches for item in batch]


def wait_for(predicate: object, timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.005)
    return bool(predicate())  # type: ignore[operator]


@pytest.fixture
def bridge() -> Iterator[Bridge]:
    with fresh_bridge() as b:
        yield b


def test_items_added_while_a_drain_waits_are_flushed_for_it(bridge: Bridge) -> None:
    # The batcher watches for max_delay (30 s) after its first flush; items added after drain()
    # began waiting (here, for a lane job) must not wait for that timer.
    lane = bridge.lane("one-at-a-time", max_concurrency=1)
    flush = Recorder()
    batcher = bridge.batcher(flush, max_size=1000, max_delay=30, lane=lane)
    batcher.add("first")
    assert bridge.drain(5) and flush.items == ["first"]  # and the timer is armed again
    assert lane.run_soon(asyncio.sleep(0.3))

    def later() -> None:
        time.sleep(0.1)
        for i in range(5):
            batcher.add(i)

    adder = threading.Thread(target=later)
    adder.start()
    started = time.monotonic()
    assert bridge.drain(5) is True
    elapsed = time.monotonic() - started
    adder.join(5)
    assert flush.items == ["first", 0, 1, 2, 3, 4]
    assert elapsed < 2  # not the 5 s timeout, nor the 30 s timer


def test_a_drain_waiting_on_a_busy_bridge_does_not_flush_item_by_item(bridge: Bridge) -> None:
    # While a drain waits, what waits is sent now, one flush of the queue at a time: items that
    # come in while it flies go in the next one. (A flush each made 1.5 items a flush.)
    flying = [0, 0]  # now, most at once
    sizes: list[int] = []

    async def flush(items: list[int]) -> None:
        flying[0] += 1
        flying[1] = max(flying)
        await asyncio.sleep(0.02)
        sizes.append(len(items))
        flying[0] -= 1

    batcher = bridge.batcher(flush, max_size=100, max_delay=0.05)
    release = threading.Event()

    async def busy() -> None:
        while not release.is_set():  # noqa: ASYNC110 (a threading.Event, set by this thread)
            await asyncio.sleep(0.005)

    assert bridge.run_soon(busy())
    drained: list[bool] = []
    drainer = threading.Thread(target=lambda: drained.append(bridge.drain(20)))
    drainer.start()
    time.sleep(0.05)  # the drain waits

    def add(base: int) -> None:
        for i in range(300):
            assert batcher.add(base + i)
            time.sleep(0.0005)

    adders = [threading.Thread(target=add, args=(k * 1000,)) for k in range(2)]
    for t in adders:
        t.start()
    for t in adders:
        t.join(20)
    release.set()
    drainer.join(20)
    assert drained == [True]
    assert sum(sizes) == 600 and bridge.stats().completed == 601
    assert flying[1] == 1
    assert len(sizes) <= 600 / 4, sizes  # about what gathers in 20 ms, not one or two


def test_a_flush_cancelled_before_its_first_step_counts_its_items_cancelled(
    bridge: Bridge,
) -> None:
    # Code that cancels tasks on the loop (or shutdown's cleanup) can cancel a flush's task
    # before it first runs: its job never starts, and nothing else counted its items.
    async def flush(items: list[int]) -> None:
        await asyncio.sleep(0)

    batcher = bridge.batcher(flush, max_size=2, max_delay=30)

    async def job() -> None:
        loop = asyncio.get_running_loop()
        batcher.add(1)
        batcher.add(2)  # the size kick: a flush starts in the next loop turn

        def cancel_flushes() -> None:
            for task in asyncio.all_tasks(loop):
                if "_batch_job" in repr(task.get_coro()):
                    task.cancel()

        loop.call_soon(cancel_flushes)
        await asyncio.sleep(0.05)

    bridge.run(job(), timeout=5)
    s = bridge.stats()
    assert (s.accepted, s.completed, s.cancelled, s.running) == (3, 1, 2, 0)
    assert bridge.drain(1) is True
    assert batcher._q.flushing == 0 and bridge._rt.tasks == {}


def test_max_size_items_flush_at_once_and_the_rest_waits(bridge: Bridge) -> None:
    flush = Recorder()
    batcher = bridge.batcher(flush, max_size=10, max_delay=60)
    assert all(batcher.add(i) for i in range(25))
    assert wait_for(lambda: len(flush.batches) == 2)
    time.sleep(0.1)
    assert flush.batches == [list(range(10)), list(range(10, 20))]
    s = bridge.stats()
    assert (s.accepted, s.completed, s.pending, s.running) == (25, 20, 5, 0)
    report = bridge.shutdown(5)  # the 5 waiting are flushed at once, not after 60 s
    assert flush.batches[2] == list(range(20, 25))
    assert report.elapsed < 2 and report.clean
    assert report.stats.completed == 25


def test_the_oldest_item_waits_at_most_max_delay(bridge: Bridge) -> None:
    flush = Recorder()
    batcher = bridge.batcher(flush, max_size=1000, max_delay=0.2)
    added = time.monotonic()
    for i in range(3):
        assert batcher.add(i)
    assert wait_for(lambda: flush.batches)
    waited = flush.started[0] - added
    assert 0.19 <= waited  # the delay trigger, not an early flush
    assert flush.batches == [[0, 1, 2]]
    # Items after a flush start a new wait.
    batcher.add(3)
    assert wait_for(lambda: len(flush.batches) == 2)
    assert flush.batches[1] == [3]


def _sixteen_threads(bridge: Bridge, max_pending: int) -> tuple[Recorder, list[int]]:
    flush = Recorder()
    lane = bridge.lane("sixteen", max_pending=max_pending)
    batcher = bridge.batcher(flush, max_size=50, max_delay=0.01, lane=lane)
    start = threading.Barrier(16)
    accepted = [0] * 16

    def add_many(k: int) -> None:
        start.wait(10)
        for i in range(1000):
            accepted[k] += batcher.add((k, i))

    threads = [threading.Thread(target=add_many, args=(k,)) for k in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert bridge.drain(30)
    return flush, accepted


def test_sixteen_threads_adding_at_once_count_every_item_exactly(bridge: Bridge) -> None:
    flush, accepted = _sixteen_threads(bridge, max_pending=20_000)
    assert sum(accepted) == 16_000
    items = flush.items
    assert len(items) == 16_000 and len(set(items)) == 16_000
    assert all(1 <= len(b) <= 50 for b in flush.batches)
    # Each thread's items arrive in its own order.
    per_thread: dict[int, list[int]] = collections.defaultdict(list)
    for item in items:
        k, i = cast(tuple[int, int], item)
        per_thread[k].append(i)
    assert all(v == list(range(1000)) for v in per_thread.values())
    s = bridge.stats()
    assert_invariant(s)
    assert (s.accepted, s.completed, s.failed, s.pending, s.running) == (16_000, 16_000, 0, 0, 0)


def test_sixteen_threads_against_a_small_backlog_count_every_refusal(bridge: Bridge) -> None:
    flush, accepted = _sixteen_threads(bridge, max_pending=200)
    s = bridge.stats().lanes["sixteen"]
    assert_invariant(s)
    assert s.accepted == sum(accepted) == s.completed == len(flush.items)
    assert s.accepted + s.dropped["full"] == 16_000
    assert len(set(flush.items)) == len(flush.items)


def test_a_failed_flush_fails_all_its_items(
    bridge: Bridge, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, "asyncbridge")
    errors: list[tuple[BaseException, str]] = []
    bridge.configure(on_error=lambda exc, name: errors.append((exc, name)))
    flush = Recorder(fail_on=13)
    batcher = bridge.batcher(flush, max_size=10, max_delay=0.01)
    for i in range(30):
        assert batcher.add(i)
    assert bridge.drain(10)
    s = bridge.stats()
    assert (s.accepted, s.completed, s.failed) == (30, 20, 10)
    assert len(errors) == 1 and isinstance(errors[0][0], ConnectionRefusedError)
    assert errors[0][1].endswith("Recorder")  # named after the flush function
    assert len([r for r in caplog.records if "failed" in r.getMessage()]) == 1


def test_a_batchers_backlog_and_policy_apply_per_item() -> None:
    with fresh_bridge() as bridge:
        drops: list[tuple[str, str]] = []
        bridge.configure(on_drop=lambda name, reason: drops.append((name, reason)))
        lane = bridge.lane("small", max_pending=10)
        batcher = bridge.batcher(Recorder(), max_size=100, max_delay=60, lane=lane)
        results = [batcher.add(i) for i in range(30)]
        assert results == [True] * 10 + [False] * 20
        s = lane.stats()
        assert (s.accepted, s.pending, s.dropped["full"]) == (10, 10, 20)
        assert len(drops) == 20 and {reason for _, reason in drops} == {"full"}
        assert drops[0][0].endswith("Recorder")
        lane.configure(on_full="raise")
        with pytest.raises(BacklogFull):
            batcher.add(99)
        assert lane.stats().dropped["full"] == 21


def test_block_waits_for_a_flush_to_make_room() -> None:
    with fresh_bridge() as bridge:
        hold = threading.Event()
        flush = Recorder(hold=hold)
        lane = bridge.lane("blocking", max_pending=4, on_full="block", block_timeout=5)
        batcher = bridge.batcher(flush, max_size=4, max_delay=60, lane=lane)
        for i in range(4):
            assert batcher.add(i)
        threading.Timer(0.2, hold.set).start()
        started = time.monotonic()
        assert batcher.add(4)  # waits until the running flush of 4 is done
        assert time.monotonic() - started >= 0.15
        assert bridge.drain(10)
        assert flush.items == [0, 1, 2, 3, 4]


def test_flushes_take_the_lanes_slots() -> None:
    with fresh_bridge() as bridge:
        hold = threading.Event()
        flush = Recorder(hold=hold)
        lane = bridge.lane("single", max_concurrency=1)
        batcher = bridge.batcher(flush, max_size=2, max_delay=0.01, lane=lane)
        for i in range(6):
            batcher.add(i)
        assert wait_for(lambda: len(flush.started) == 1)
        time.sleep(0.1)
        assert len(flush.started) == 1  # one slot: the other batches wait their turn
        s = lane.stats()
        assert (s.running, s.pending) == (2, 4)
        hold.set()
        assert bridge.drain(10)
        assert flush.batches == [[0, 1], [2, 3], [4, 5]]


def test_at_the_deadline_what_still_waits_is_cancelled_and_counted() -> None:
    bridge = Bridge()
    hold = threading.Event()  # never set: the flush hangs
    lane = bridge.lane("stuck", max_concurrency=1)
    batcher = bridge.batcher(Recorder(hold=hold), max_size=3, max_delay=60, lane=lane)
    for i in range(7):
        assert batcher.add(i)
    report = bridge.shutdown(0.5)
    s = report.stats
    assert_invariant(s)
    # 3 in the hanging flush, then 3 and 1 that never got the slot: all cancelled, by item.
    assert (s.accepted, s.completed, s.cancelled) == (7, 0, 7)
    assert len(report.cancelled_names) == 7
    assert not batcher.add(8)
    assert bridge.stats().dropped["closed"] == 1


def test_a_batcher_follows_the_default_bridge() -> None:
    flush = Recorder()
    batcher = asyncbridge.batcher(flush, max_size=5, max_delay=0.01)
    test_bridge = Bridge()
    previous = asyncbridge.set_default_bridge(test_bridge)
    try:
        for i in range(5):
            assert batcher.add(i)
        assert test_bridge.drain(10)
        assert flush.items == [0, 1, 2, 3, 4]
        assert test_bridge.stats().completed == 5
    finally:
        asyncbridge.set_default_bridge(previous)
        test_bridge.shutdown(5)


def test_bad_arguments(bridge: Bridge) -> None:
    flush = Recorder()
    with pytest.raises(ValueError):
        bridge.batcher(flush, max_size=0)
    with pytest.raises(TypeError):
        bridge.batcher(flush, max_size=2.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        bridge.batcher(flush, max_delay=-1)
    with pytest.raises(TypeError):
        bridge.batcher(42)  # type: ignore[arg-type]
    coro = flush([])
    with pytest.raises(TypeError, match="not a coroutine"):
        bridge.batcher(coro)  # type: ignore[arg-type]
    coro.close()
    with pytest.raises(TypeError):
        bridge.batcher(flush, lane=3)  # type: ignore[arg-type]


@pytest.mark.filterwarnings(FORK_WARNING)
def test_a_batcher_follows_the_process_across_fork() -> None:
    with fresh_bridge() as bridge:
        flush = Recorder()
        batcher = bridge.batcher(flush, max_size=100, max_delay=60)
        for i in range(5):
            assert batcher.add(f"parent-{i}")
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                os.close(read_fd)
                for i in range(3):
                    batcher.add(f"child-{i}")
                report = bridge.shutdown(5)
                payload = {"items": flush.items, "completed": report.stats.completed}
                os.write(write_fd, json.dumps(payload).encode())
                code = 0
            finally:
                os._exit(code)
        os.close(write_fd)
        assert wait_child(pid, 60) == 0
        with os.fdopen(read_fd) as f:
            child = json.loads(f.read())
        assert child == {"items": ["child-0", "child-1", "child-2"], "completed": 3}
        report = bridge.shutdown(5)
        assert flush.items == [f"parent-{i}" for i in range(5)]
        assert report.stats.completed == 5


def test_full_batches_waiting_for_slots_never_exceed_the_lanes_limit() -> None:
    active = 0
    most = 0
    release = threading.Event()

    async def slow_flush(items: list[int]) -> None:
        nonlocal active, most
        active += 1
        most = max(most, active)
        try:
            while not release.is_set():  # noqa: ASYNC110 (a threading.Event: polled)
                await asyncio.sleep(0.005)
        finally:
            active -= 1

    with fresh_bridge() as bridge:
        lane = bridge.lane("pair", max_concurrency=2)
        batcher = bridge.batcher(slow_flush, max_size=5, max_delay=60, lane=lane)
        for i in range(50):  # ten full batches at once
            assert batcher.add(i)
        assert wait_for(lambda: active == 2)
        time.sleep(0.1)
        assert most == 2
        s = lane.stats()
        assert (s.running, s.pending) == (10, 40)
        release.set()
        assert bridge.drain(10)
        assert most == 2 and lane.stats().completed == 50
