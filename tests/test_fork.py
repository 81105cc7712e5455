"""Fork safety with raw os.fork() and multiprocessing: the child never touches the parent's loop."""

from __future__ import annotations

import asyncio
import json
import mmap
import multiprocessing
import os
import threading
import time

import pytest

from asyncbridge import Bridge, _forkmark

from .helpers import FORK_WARNING, assert_invariant, sleeper, wait_child

pytestmark = pytest.mark.filterwarnings(FORK_WARNING)


@pytest.fixture(params=["wipe-on-fork page", "pid comparison"])
def fork_detection(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run every fork test with the kernel's fork marker and with the PID fallback alone."""
    if request.param == "pid comparison":
        monkeypatch.setattr(_forkmark, "fork_marker", lambda: bytearray(1))
    else:
        assert isinstance(_forkmark.fork_marker(), mmap.mmap), "this kernel lacks WIPEONFORK"
    return str(request.param)


def test_the_fork_marker_reads_one_here_and_zero_in_a_forked_child() -> None:
    marker = _forkmark.fork_marker()
    assert isinstance(marker, mmap.mmap)
    assert marker[0] == 1
    pid = os.fork()
    if pid == 0:
        os._exit(10 + marker[0])
    assert wait_child(pid, 10) == 10
    assert marker[0] == 1


@pytest.mark.usefixtures("fork_detection")
def test_child_gets_a_fresh_loop_and_never_runs_the_parents_queued_work() -> None:
    bridge = Bridge(max_concurrency=1)
    ran_in: list[int] = []
    gate = threading.Event()

    async def parent_job() -> None:
        ran_in.append(os.getpid())
        await asyncio.sleep(0)

    async def blocker() -> None:
        # Holds the only concurrency slot so the parent's jobs stay queued across the fork.
        while not gate.is_set():  # noqa: ASYNC110 - set from another thread
            await asyncio.sleep(0.01)

    bridge.run_soon(blocker())
    for _ in range(5):
        bridge.run_soon(parent_job())
    parent_loop = bridge.get_loop()
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: report facts through the pipe, then leave without cleanup
        try:
            os.close(read_fd)
            before = bridge.stats()
            result = bridge.run(sleeper(0, "child ok"), timeout=5)
            after = bridge.stats()
            facts = {
                "before_accepted": before.accepted,
                "result": result,
                "fresh_loop": bridge.get_loop() is not parent_loop,
                "after": [after.accepted, after.completed, after.pending, after.pid],
                "parent_jobs_ran_here": [p for p in ran_in if p == os.getpid()],
                "thread": [  # loop threads (the stall watchdog's is not one)
                    t.name
                    for t in threading.enumerate()
                    if t.name.startswith("asyncb") and "watchdog" not in t.name
                ],
            }
            bridge.shutdown(2)
            os.write(write_fd, json.dumps(facts).encode())
        finally:
            os._exit(0)
    os.close(write_fd)
    code = wait_child(pid, 30)
    with os.fdopen(read_fd) as pipe:
        facts = json.loads(pipe.read())
    assert code == 0
    assert facts["before_accepted"] == 0  # the child's stats start empty
    assert facts["result"] == "child ok"
    assert facts["fresh_loop"] is True
    assert facts["after"] == [1, 1, 0, pid]
    assert facts["parent_jobs_ran_here"] == []
    assert facts["thread"] == [f"asyncbridge-{pid}"]
    # the parent is unaffected: its queued work still runs there
    gate.set()
    report = bridge.shutdown(5)
    assert (report.stats.accepted, report.stats.completed) == (6, 6)
    assert ran_in == [os.getpid()] * 5


@pytest.mark.usefixtures("fork_detection")
def test_two_hundred_forks_while_four_threads_hammer_run_soon() -> None:
    bridge = Bridge(max_pending=2_000)
    stop = threading.Event()
    accepted = [0] * 4
    attempts = [0] * 4

    async def noop() -> None:
        pass

    def hammer(slot: int) -> None:
        while not stop.is_set():
            attempts[slot] += 1
            if bridge.run_soon(noop()):
                accepted[slot] += 1
            if attempts[slot] % 64 == 0:
                time.sleep(0.0005)  # leave the loop thread (and the forks) some CPU

    threads = [threading.Thread(target=hammer, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    try:
        for _ in range(200):
            pid = os.fork()
            if pid == 0:
                code = 1
                try:
                    ok = bridge.run(noop(), timeout=5) is None
                    s = bridge.stats()
                    code = 0 if ok and (s.accepted, s.completed) == (1, 1) else 2
                finally:
                    os._exit(code)
            assert wait_child(pid, 20) == 0
    finally:
        stop.set()
        for t in threads:
            t.join(10)
    report = bridge.shutdown(10)
    s = report.stats
    assert s.accepted == sum(accepted)
    assert s.completed == s.accepted > 0
    assert s.dropped == {"full": sum(attempts) - sum(accepted), "closed": 0}
    assert_invariant(s)


def _child_uses_run_soon(queue: multiprocessing.Queue[tuple[int, int, int]]) -> None:
    import asyncbridge

    done: list[int] = []

    async def job(i: int) -> None:
        done.append(i)

    for i in range(10):
        asyncbridge.run_soon(job(i))
    report = asyncbridge.shutdown(5)
    queue.put((os.getpid(), report.stats.completed, len(done)))


@pytest.mark.usefixtures("fork_detection")
def test_multiprocessing_fork_children_can_use_run_soon() -> None:
    import asyncbridge

    # The parent has a running default loop too, inherited by every child.
    assert asyncbridge.run(sleeper(0, 1), timeout=5) == 1
    ctx = multiprocessing.get_context("fork")
    queue: multiprocessing.Queue[tuple[int, int, int]] = ctx.Queue()
    procs = [ctx.Process(target=_child_uses_run_soon, args=(queue,)) for _ in range(3)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=30) for _ in procs]
    for p in procs:
        p.join(10)
        assert p.exitcode == 0
    assert sorted(pid for pid, _, _ in results) == sorted(p.pid for p in procs if p.pid)
    assert all((completed, ran) == (10, 10) for _, completed, ran in results)
    queue.close()
    queue.join_thread()
