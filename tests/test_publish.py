"""Each process publishes its counts in the status directory, where they outlive a SIGKILL."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from asyncbridge import Bridge, Stats, _publish
from asyncbridge._publish import Publisher, Timing, read_directory, read_file, worker_gone

from .helpers import FORK_WARNING, ROOT, fresh_bridge, wait_child

# A process that publishes, holds `hang` jobs running and `done` finished, says "ready", and
# waits to be killed (or to read a line, then exits cleanly through shutdown).
_CHILD = """
import asyncio, sys, time
import asyncbridge

async def hang():
    await asyncio.sleep(3600)

async def quick():
    pass

bridge = asyncbridge.Bridge(status_dir=sys.argv[1], stall_warning=None)
for _ in range(int(sys.argv[3])):
    bridge.run_soon(quick())
for _ in range(int(sys.argv[2])):
    bridge.run_soon(hang())
while bridge.stats().running < int(sys.argv[2]):
    time.sleep(0.01)
print("ready", flush=True)
sys.stdin.readline()
print(bridge.shutdown(0.2), flush=True)
"""


@contextlib.contextmanager
def _child(directory: Path, hang: int, done: int) -> Iterator[subprocess.Popen[str]]:
    """The child above, started and ready; its pipes closed and the process gone afterwards."""
    with subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(directory), str(hang), str(done)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    ) as proc:
        try:
            assert proc.stdout is not None
            assert proc.stdout.readline() == "ready\n"
            yield proc
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait(10)


def _published(directory: Path, pid: int) -> _publish.ProcessRecord:
    """The process's record once it shows what it holds (a loop turn after the fact)."""
    deadline = time.monotonic() + 10
    while True:
        view = read_directory(str(directory))
        recs = [r for r in view.live + view.dead if r.pid == pid]
        if recs and recs[0].total().counts["completed"] + recs[0].total().unfinished > 0:
            rec = recs[0]
            c = rec.total().counts
            if c["accepted"] == c["completed"] + c["running"] + c["pending"]:
                return rec
        assert time.monotonic() < deadline, f"pid {pid} published nothing consistent"
        time.sleep(0.01)


async def quick() -> None:
    await asyncio.sleep(0)


async def slow(seconds: float) -> None:
    await asyncio.sleep(seconds)


async def broken() -> None:
    raise ValueError("no")


def test_a_running_bridge_publishes_what_stats_says(tmp_path: Path) -> None:
    with fresh_bridge(status_dir=str(tmp_path), max_pending=3, max_concurrency=1) as bridge:
        bridge.run_soon(slow(0.2))
        bridge.run_soon(quick())
        bridge.run_soon(broken())
        assert bridge.run_soon(quick()) is False  # full: dropped
        assert bridge.drain(timeout=10)
        time.sleep(0.05)  # the loop turn after the last job
        stats = bridge.stats()
        view = read_directory(str(tmp_path))
        assert [r.pid for r in view.live] == [os.getpid()] and view.dead == []
        rec = view.live[0]
        assert rec.state_name == "running"
        assert rec.lanes["default"].counts == {
            "accepted": stats.accepted,
            "completed": stats.completed,
            "failed": stats.failed,
            "timed_out": 0,
            "cancelled": 0,
            "pending": 0,
            "running": 0,
            "dropped_full": 1,
            "dropped_closed": 0,
            "dropped_other": 0,
            "retries": 0,
        }
        assert (stats.accepted, stats.completed, stats.failed) == (3, 2, 1)


def test_shutdown_publishes_drained_with_the_final_counts_and_histograms(tmp_path: Path) -> None:
    bridge = Bridge(status_dir=str(tmp_path))
    for _ in range(20):
        bridge.run_soon(slow(0.06))
    report = bridge.shutdown(10)
    rec = read_file(str(next(tmp_path.glob("*.asyncbridge"))))
    assert rec is not None and rec.drained and rec.abandoned == 0
    lane = rec.lanes["default"]
    assert lane.counts["accepted"] == lane.counts["completed"] == report.stats.completed == 20
    assert sum(lane.duration_counts) == 20 and sum(lane.wait_counts) == 20
    # Each ran about 60 ms: counted in the buckets above 50 ms, none at or below 50 ms.
    below = [
        n
        for bound, n in zip(_publish.DURATION_BOUNDS, lane.duration_counts, strict=True)
        if bound <= 0.05
    ]
    assert sum(below) == 0
    assert 20 * 0.06 <= lane.duration_sum < 20 * 2.0


def test_a_killed_process_is_counted_lost_exactly_once_with_the_masters_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with _child(tmp_path, hang=5, done=3) as proc:
        rec = _published(tmp_path, proc.pid)
        assert rec.total().counts["running"] == 5 and rec.total().counts["completed"] == 3
        proc.kill()
        proc.wait(10)
    view = read_directory(str(tmp_path))
    assert [r.pid for r in view.dead] == [proc.pid] and view.lanes()["default"].lost == 5
    with caplog.at_level(logging.WARNING, logger="asyncbridge"):
        claimed = worker_gone(proc.pid, str(tmp_path))
        again = worker_gone(proc.pid, str(tmp_path))
    assert [(c.pid, c.drained, c.lost) for c in claimed] == [(proc.pid, False, 5)]
    assert again == []
    assert [r.getMessage() for r in caplog.records] == [
        f"asyncbridge: worker {proc.pid} ended without draining: at least 5 accepted jobs "
        "unfinished (lost)"
    ]
    exited = json.loads((tmp_path / "exited.json").read_text())
    assert (exited["processes"], exited["undrained"]) == (1, 1)
    assert exited["lanes"]["default"]["lost"] == 5
    assert exited["lanes"]["default"]["counts"]["accepted"] == 8
    assert list(tmp_path.glob("*.asyncbridge")) == []  # folded in, then removed


def test_a_drained_process_is_counted_without_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with _child(tmp_path, hang=2, done=4) as proc:
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write("\n")
        proc.stdin.flush()
        out = proc.stdout.read()
        assert proc.wait(10) == 0
    assert "cancelled=2" in out
    with caplog.at_level(logging.WARNING, logger="asyncbridge"):
        claimed = worker_gone(proc.pid, str(tmp_path))
    assert [(c.drained, c.lost) for c in claimed] == [(True, 0)]
    assert caplog.records == []
    exited = read_directory(str(tmp_path)).exited
    assert (exited.processes, exited.undrained, exited.lost) == (1, 0, 0)
    assert exited.lanes["default"].counts["cancelled"] == 2


def test_the_next_process_to_start_counts_a_dead_predecessor(tmp_path: Path) -> None:
    # uWSGI's master runs no Python when a worker dies; the worker that replaces it counts it.
    with _child(tmp_path, hang=3, done=0) as proc:
        _published(tmp_path, proc.pid)
        proc.kill()
        proc.wait(10)
    code = (
        "import asyncbridge, sys, time\n"
        f"b = asyncbridge.Bridge(status_dir={str(tmp_path)!r}, stall_warning=None)\n"
        "b.start(); time.sleep(0.3); b.shutdown(1)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert done.returncode == 0, done.stderr
    assert (
        f"asyncbridge: worker {proc.pid} ended without draining: at least 3 accepted jobs "
        "unfinished (lost)"
    ) in done.stderr
    view = read_directory(str(tmp_path))
    assert view.exited.lost == 3 and view.exited.processes == 1
    # The successor itself drained and is gone; nobody has counted it yet, and it lost nothing.
    assert [(r.drained, r.total().unfinished) for r in view.dead] == [(True, 0)]


def test_a_reader_never_sees_a_torn_record(tmp_path: Path) -> None:
    pub = Publisher(str(tmp_path))
    stop = threading.Event()

    def write() -> None:
        n = 0
        while not stop.is_set():
            n += 1
            # Every record written keeps accepted == completed + running.
            pub.write([("default", (2 * n, n, 0, 0, 0, 0, n, 0, 0, 0, 0), None)])

    writer = threading.Thread(target=write)
    writer.start()
    try:
        seen = set()
        for _ in range(3000):
            rec = read_file(pub.path)
            assert rec is not None
            c = rec.lanes["default"].counts
            assert c["accepted"] == c["completed"] + c["running"], c
            seen.add(c["accepted"])
        assert len(seen) > 1  # the writer did move on while we read
    finally:
        stop.set()
        writer.join(10)
        pub.close()


@pytest.mark.filterwarnings(FORK_WARNING)
def test_a_forked_child_publishes_in_its_own_file(tmp_path: Path) -> None:
    bridge = Bridge(status_dir=str(tmp_path), stall_warning=None)
    try:
        bridge.run_soon(quick())
        assert bridge.drain(timeout=5)
        pid = os.fork()
        if pid == 0:
            try:
                bridge.run_soon(quick())
                bridge.run_soon(quick())
                bridge.shutdown(2)
            finally:
                os._exit(0)
        assert wait_child(pid, 30) == 0
        time.sleep(0.05)
        records = {r.pid: r for r in (read_file(str(p)) for p in tmp_path.glob("*")) if r}
        assert set(records) == {os.getpid(), pid}
        assert records[pid].drained and records[pid].total().counts["completed"] == 2
        assert records[os.getpid()].state_name == "running"
        assert records[os.getpid()].total().counts["completed"] == 1
    finally:
        bridge.shutdown(5)


def test_a_directory_that_cannot_be_written_turns_publishing_off_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocked = tmp_path / "file"
    blocked.write_text("not a directory")
    with (
        caplog.at_level(logging.WARNING, "asyncbridge"),
        fresh_bridge(status_dir=str(blocked / "sub")) as bridge,
    ):
        assert bridge.run(slow(0), timeout=5) is None
    assert any("cannot publish status" in r.getMessage() for r in caplog.records)


def test_no_directory_publishes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ASYNCBRIDGE_STATUS_DIR", raising=False)
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    with fresh_bridge() as bridge:
        bridge.run(slow(0), timeout=5)
        assert bridge._rt.publisher is None
    assert _publish.resolve_directory(None) is None
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    assert _publish.resolve_directory(None) == str(tmp_path)
    monkeypatch.setenv("ASYNCBRIDGE_STATUS_DIR", str(tmp_path / "own"))
    assert _publish.resolve_directory(None) == str(tmp_path / "own")
    assert _publish.resolve_directory("given") == "given"


def test_wait_is_counted_from_the_first_hand_off_of_each_wake_up() -> None:
    t = Timing()
    t.pulled(3, first_handoff=10.0)  # items 1-3 handed over from t=10
    t.pulled(5, first_handoff=10.5)  # items 4-5 from t=10.5
    t.took(0, 2, now=11.0, current_wakeup=99.0)  # items 1-2 start at 11: waited 1.0 s
    t.took(2, 3, now=12.0, current_wakeup=99.0)  # 3 (from 10): 2.0 s; 4-5 (from 10.5): 1.5 s
    t.took(5, 1, now=99.5, current_wakeup=99.0)  # 6, after the last pull: its wake-up's time
    assert t.wait.count == 6
    assert t.wait.sum == pytest.approx(2 * 1.0 + 2.0 + 2 * 1.5 + 0.5)
    assert list(t.marks) == []
    hist = _publish.Histogram(_publish.WAIT_BOUNDS)
    hist.add(0.0005)  # on a bound: counted in it (Prometheus' le)
    hist.add(float("inf"))
    hist.add(-1.0)  # a clock step back counts as 0
    assert hist.counts[0] == 2 and hist.counts[-1] == 1


def test_more_lanes_than_fit_are_folded_into_one_record(tmp_path: Path) -> None:
    pub = Publisher(str(tmp_path))
    lanes = [(f"lane{i}", (i, i, 0, 0, 0, 0, 0, 0, 0, 0, 0), None) for i in range(40)]
    pub.write(lanes)
    rec = read_file(pub.path)
    assert rec is not None and len(rec.lanes) == _publish.MAX_LANES
    other = rec.lanes[_publish.OTHER_LANE].counts["accepted"]
    assert other == sum(range(_publish.MAX_LANES - 1, 40))
    assert sum(lane.counts["accepted"] for lane in rec.lanes.values()) == sum(range(40))
    pub.close()


def test_lanes_of_reads_per_lane_stats_when_there_are_lanes() -> None:
    assert list(_publish.lanes_of(Stats(accepted=1))) == ["default"]

    class WithLanes:
        lanes = {"default": Stats(accepted=1), "push": Stats(accepted=2)}  # noqa: RUF012

    assert {k: v.accepted for k, v in _publish.lanes_of(WithLanes()).items()} == {
        "default": 1,
        "push": 2,
    }


def test_sigkill_while_draining_is_still_counted_as_undrained(tmp_path: Path) -> None:
    code = (
        "import asyncio, sys, asyncbridge\n"
        f"b = asyncbridge.Bridge(status_dir={str(tmp_path)!r}, stall_warning=None)\n"
        "async def hang():\n    await asyncio.sleep(3600)\n"
        "for _ in range(4):\n    b.run_soon(hang())\n"
        "print('ready', flush=True)\n"
        "b.shutdown(3600)\n"
    )
    with subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, cwd=ROOT
    ) as proc:
        try:
            assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
            deadline = time.monotonic() + 10
            while True:
                recs = [r for r in read_directory(str(tmp_path)).live if r.pid == proc.pid]
                if recs and recs[0].state_name == "draining" and recs[0].total().unfinished == 4:
                    break
                assert time.monotonic() < deadline
                time.sleep(0.01)
        finally:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)
    (claimed,) = worker_gone(proc.pid, str(tmp_path))
    assert (claimed.drained, claimed.lost) == (False, 4)


def test_each_lane_is_published_with_its_own_counts_and_timing(tmp_path: Path) -> None:
    with fresh_bridge(status_dir=str(tmp_path)) as bridge:
        push = bridge.lane("push", max_concurrency=1)
        for _ in range(3):
            assert push.run_soon(slow(0.06))
        assert bridge.run_soon(quick())
        assert bridge.run_soon(broken())
        assert bridge.drain(timeout=10)
        time.sleep(0.3)  # past the histograms' 0.1 s
        stats = bridge.stats()
        (rec,) = read_directory(str(tmp_path)).live
    assert set(rec.lanes) == {"default", "push"}
    for name in ("default", "push"):
        counts = rec.lanes[name].counts
        lane_stats = stats.lanes[name]
        assert (counts["accepted"], counts["completed"], counts["failed"]) == (
            lane_stats.accepted,
            lane_stats.completed,
            lane_stats.failed,
        )
    assert rec.lanes["push"].counts["completed"] == 3
    assert rec.lanes["default"].counts["failed"] == 1
    assert sum(rec.lanes["push"].duration_counts) == 3
    assert sum(rec.lanes["default"].duration_counts) == 2
    # push ran one at a time: the third waited for the two before it (about 120 ms).
    assert rec.lanes["push"].wait_sum >= 0.1
    assert sum(rec.lanes["push"].wait_counts) == 3
