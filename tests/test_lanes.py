"""Lanes: their own admission, concurrency limit and counters, one loop, one shutdown, fork."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
import time
from collections.abc import Iterator

import pytest

import asyncbridge
from asyncbridge import BacklogFull, Bridge

from .helpers import FORK_WARNING, assert_invariant, fresh_bridge, wait_child


async def hang(event: threading.Event | None = None) -> None:
    # A threading.Event, set by the test's thread: polled, since asyncio cannot wait on it.
    while event is None or not event.is_set():  # noqa: ASYNC110
        await asyncio.sleep(0.01)


async def quick(box: list[str], name: str) -> None:
    box.append(name)


async def fail(message: str) -> None:
    raise ConnectionRefusedError(message)


@pytest.fixture
def bridge() -> Iterator[Bridge]:
    with fresh_bridge() as b:
        yield b


def test_a_lane_is_made_once_per_name(bridge: Bridge) -> None:
    push = bridge.lane("push", max_concurrency=4)
    assert bridge.lane("push") is push
    assert bridge.lane("push", max_concurrency=4) is push
    assert push.name == "push"
    assert push.options.max_concurrency == 4
    with pytest.raises(ValueError, match="already exists"):
        bridge.lane("push", max_concurrency=5)
    with pytest.raises(TypeError, match="drain_timeout"):
        bridge.lane("other", drain_timeout=1)
    with pytest.raises(ValueError):
        bridge.lane("other", max_pending=0)
    with pytest.raises(TypeError):
        bridge.lane(42)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        bridge.lane("")


def test_options_default_to_the_bridges_and_follow_its_configure(bridge: Bridge) -> None:
    own = bridge.lane("own", task_timeout=None, max_pending=7)
    inherits = bridge.lane("inherits")
    bridge.configure(task_timeout=0.05, max_concurrency=3)
    assert inherits.options.task_timeout == 0.05 and inherits.options.max_concurrency == 3
    assert own.options.task_timeout is None and own.options.max_pending == 7
    assert inherits.run_soon(asyncio.sleep(1))
    assert own.run_soon(asyncio.sleep(0.1))
    assert bridge.drain(10)
    assert inherits.stats().timed_out == 1
    assert own.stats().completed == 1 and own.stats().timed_out == 0
    # configure() after the lane's state exists reaches it too.
    bridge.configure(task_timeout=None)
    assert inherits.run_soon(asyncio.sleep(0.1))
    assert bridge.drain(10)
    assert inherits.stats().completed == 1


def test_a_hanging_lane_does_not_hold_up_the_others(bridge: Bridge) -> None:
    release = threading.Event()
    broken = bridge.lane("broken", max_concurrency=2, max_pending=10)
    healthy = bridge.lane("healthy", max_concurrency=2)
    done: list[str] = []
    try:
        results = [broken.run_soon(hang(release)) for _ in range(15)]
        assert results == [True] * 10 + [False] * 5  # its own backlog is full
        for i in range(50):
            assert healthy.run_soon(quick(done, f"h{i}"))
            assert bridge.run_soon(quick(done, f"d{i}"))
        deadline = time.monotonic() + 10
        while len(done) < 100 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert sorted(done) == sorted([f"h{i}" for i in range(50)] + [f"d{i}" for i in range(50)])
        b = broken.stats()
        assert (b.accepted, b.running, b.pending, b.dropped["full"]) == (10, 2, 8, 5)
        assert healthy.stats().completed == 50 and healthy.stats().dropped_total == 0
    finally:
        release.set()
    assert bridge.drain(10)


def test_stats_are_the_total_with_each_lane_apart(bridge: Bridge) -> None:
    a = bridge.lane("a")
    b = bridge.lane("b", max_pending=3)
    box: list[str] = []
    for i in range(4):
        bridge.run_soon(quick(box, f"d{i}"))
        a.run_soon(fail("a"))
    assert bridge.drain(10)
    release = threading.Event()
    for _ in range(5):
        b.run_soon(hang(release))
    total = bridge.stats()
    release.set()
    assert set(total.lanes) == {"default", "a", "b"}
    assert total.lanes["default"].completed == 4
    assert total.lanes["a"].failed == 4
    assert total.lanes["b"].accepted == 3 and total.lanes["b"].dropped["full"] == 2
    for field in ("accepted", "completed", "failed", "timed_out", "cancelled", "pending"):
        assert getattr(total, field) == sum(getattr(s, field) for s in total.lanes.values())
    assert total.dropped["full"] == 2
    assert_invariant(total)
    for lane_stats in total.lanes.values():
        assert_invariant(lane_stats)
        assert lane_stats.lanes == {}
    assert bridge.drain(10)


def test_sixteen_threads_into_two_lanes_count_exactly(bridge: Bridge) -> None:
    left, right = bridge.lane("left"), bridge.lane("right", max_concurrency=5)
    start = threading.Barrier(16)
    accepted = [0] * 16

    async def job() -> None:
        await asyncio.sleep(0)

    def worker(k: int) -> None:
        lane = left if k % 2 else right
        start.wait(10)
        for _ in range(500):
            accepted[k] += lane.run_soon(job())

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert bridge.drain(30)
    assert sum(accepted) == 8000
    assert left.stats().completed == right.stats().completed == 4000
    assert bridge.stats().completed == 8000


def test_submit_and_run_in_a_lane(bridge: Bridge) -> None:
    lane = bridge.lane("calls", max_pending=1)
    assert lane.run(asyncio.sleep(0, "value"), timeout=5) == "value"
    with pytest.raises(ConnectionRefusedError):
        lane.submit(fail("no")).result(5)
    release = threading.Event()
    first = lane.submit(hang(release))
    with pytest.raises(BacklogFull):
        lane.submit(asyncio.sleep(0))
    release.set()
    assert first.result(5) is None
    s = lane.stats()
    assert (s.accepted, s.completed, s.failed, s.dropped["full"]) == (3, 2, 1, 1)

    async def from_the_loop() -> None:
        coro = asyncio.sleep(0)
        with pytest.raises(asyncbridge.AsyncBridgeError):
            lane.run(coro)

    bridge.run(from_the_loop(), timeout=5)


def test_a_lane_blocks_for_room_when_told(bridge: Bridge) -> None:
    lane = bridge.lane("blocking", max_pending=1, on_full="block", block_timeout=5)
    assert lane.run_soon(asyncio.sleep(0.2))
    started = time.monotonic()
    assert lane.run_soon(asyncio.sleep(0))  # waits until the first is done
    assert time.monotonic() - started >= 0.1
    assert bridge.drain(5)
    assert lane.stats().completed == 2


def test_the_default_lane_is_the_bridges_own(bridge: Bridge) -> None:
    default = bridge.lane("default")
    box: list[str] = []
    assert default.run_soon(quick(box, "x"))
    assert bridge.drain(5)
    assert bridge.stats().lanes["default"].completed == 1
    with pytest.raises(asyncbridge.AsyncBridgeError):
        default.configure(max_pending=3)
    with pytest.raises(ValueError):
        bridge.lane("default", max_pending=3)


def test_lane_configure_takes_effect_at_once(bridge: Bridge) -> None:
    lane = bridge.lane("tunable", max_pending=100)
    release = threading.Event()
    for _ in range(3):
        assert lane.run_soon(hang(release))
    lane.configure(max_pending=3)
    assert not lane.run_soon(hang(release))
    release.set()
    assert bridge.drain(5)
    assert lane.stats().dropped["full"] == 1 and lane.options.max_pending == 3


def test_one_shutdown_drains_every_lane_under_one_deadline() -> None:
    bridge = Bridge()
    a, b = bridge.lane("a"), bridge.lane("b", max_concurrency=1)
    for _ in range(3):
        a.run_soon(asyncio.sleep(0.1))
        b.run_soon(asyncio.sleep(0.1))
        bridge.run_soon(asyncio.sleep(0.1))
    a.run_soon(hang())
    b.run_soon(hang())  # waits behind b's only slot
    report = bridge.shutdown(1.0)
    s = report.stats
    assert_invariant(s)
    assert report.elapsed < 2.5
    assert s.lanes["a"].completed == 3 and s.lanes["a"].cancelled == 1
    assert s.lanes["b"].completed == 3 and s.lanes["b"].cancelled == 1
    assert s.lanes["default"].completed == 3
    assert sorted(report.cancelled_names) == ["hang", "hang"]
    text = str(report)
    assert "lane a: accepted=4 completed=3" in text and "lane b: accepted=4 completed=3" in text
    assert not a.run_soon(asyncio.sleep(0))  # closed: dropped and counted in its lane
    assert a.stats().dropped["closed"] == 1


def test_failures_in_a_lane_are_logged_with_its_name(
    bridge: Bridge, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, "asyncbridge")
    lane = bridge.lane("webhooks")
    for _ in range(50):
        lane.run_soon(fail("refused"))
    assert bridge.drain(10)
    bridge.shutdown(5)
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2, messages
    assert messages[0].startswith("asyncbridge task fail in lane 'webhooks' failed (")
    assert messages[1].startswith(
        "asyncbridge task fail in lane 'webhooks' failed 50 times in the last "
    )
    assert lane.stats().failed == 50


def test_the_module_level_lane_follows_the_default_bridge() -> None:
    lane = asyncbridge.lane("follows", max_concurrency=2)
    assert asyncbridge.lane("follows") is lane
    test_bridge = Bridge()
    previous = asyncbridge.set_default_bridge(test_bridge)
    try:
        box: list[str] = []
        assert lane.run_soon(quick(box, "x"))
        assert test_bridge.drain(5)
        assert box == ["x"]
        assert test_bridge.stats().lanes["follows"].completed == 1
        assert lane.options.max_concurrency == 2
    finally:
        asyncbridge.set_default_bridge(previous)
        test_bridge.shutdown(5)
    assert "follows" not in previous.stats().lanes


@pytest.mark.filterwarnings(FORK_WARNING)
def test_lanes_follow_the_process_across_fork() -> None:
    with fresh_bridge() as bridge:
        lane = bridge.lane("forked", max_concurrency=3, max_pending=50)
        release = threading.Event()
        for _ in range(5):
            assert lane.run_soon(hang(release))  # the parent's, still running at the fork
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child
            code = 1
            try:
                os.close(read_fd)
                before = lane.stats()
                box: list[str] = []
                for i in range(20):
                    lane.run_soon(quick(box, str(i)))
                ok = bridge.drain(10)
                after = lane.stats()
                st = bridge._rt.lanes["forked"]
                payload = {
                    "before": before.accepted,
                    "ok": ok,
                    "completed": after.completed,
                    "accepted": after.accepted,
                    "box": len(box),
                    "max_concurrency": st.options.max_concurrency,
                    "max_pending": st.options.max_pending,
                    "lanes": sorted(bridge.stats().lanes),
                }
                os.write(write_fd, json.dumps(payload).encode())
                bridge.shutdown(5)
                code = 0
            finally:
                os._exit(code)
        os.close(write_fd)
        assert wait_child(pid, 60) == 0
        with os.fdopen(read_fd) as f:
            child = json.loads(f.read())
        assert child == {
            "before": 0,
            "ok": True,
            "completed": 20,
            "accepted": 20,
            "box": 20,
            "max_concurrency": 3,
            "max_pending": 50,
            "lanes": ["default", "forked"],
        }
        assert lane.stats().running == 3 and lane.stats().pending == 2  # the parent's own
        release.set()
        assert bridge.drain(10)
        assert lane.stats().completed == 5


def test_a_lane_at_its_limit_queues_no_wake_ups_and_strands_nothing(
    bridge: Bridge, monkeypatch: pytest.MonkeyPatch
) -> None:
    from asyncbridge import _scheduler

    pulls: list[object] = []
    real_pull = _scheduler.pull

    def counting_pull(lane: object) -> None:
        pulls.append(lane)
        real_pull(lane)  # type: ignore[arg-type]

    release = threading.Event()
    lane = bridge.lane("full", max_concurrency=1)
    box: list[str] = []
    assert lane.run_soon(hang(release))
    st = bridge._rt.lanes["full"]
    deadline = time.monotonic() + 5
    while st.busy < 1 and time.monotonic() < deadline:
        time.sleep(0.005)
    monkeypatch.setattr(_scheduler, "pull", counting_pull)
    for i in range(200):
        assert lane.run_soon(quick(box, str(i)))
    time.sleep(0.05)
    # The lane is full: the loop starts these when the slot frees, so none queued a wake-up.
    assert pulls == [] and st.backoffs == 0
    assert lane.stats().pending == 200
    release.set()
    assert bridge.drain(10)
    assert box == [str(i) for i in range(200)]
    assert lane.stats().completed == 201
