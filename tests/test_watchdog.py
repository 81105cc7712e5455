"""The stall watchdog: it names what blocks the loop, counts episodes, and stays quiet otherwise."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from asyncbridge import Bridge, Options, _watchdog
from asyncbridge._config import options_from_env

from .helpers import FORK_WARNING, assert_invariant, fresh_bridge, run_python, wait_child

HERE = Path(__file__).resolve()
START = re.compile(
    r"the loop of pid (\d+) has had no turn for ([\d.]+)s: "
    r"coroutine (\S+) at (.+):(\d+) in (\S+) is blocking it"
)
END = re.compile(
    r"the loop of pid (\d+) turned again after a stall of ([\d.]+)s \(coroutine (\S+) at"
)


def _line_of(marker: str) -> int:
    """The line of this file that carries ``marker`` in a comment."""
    for number, line in enumerate(HERE.read_text().splitlines(), start=1):
        if line.rstrip().endswith(f"# {marker}"):
            return number
    raise AssertionError(f"no line marked {marker}")


async def blocks_the_loop(seconds: float, secret: str = "") -> None:
    time.sleep(seconds)  # noqa: ASYNC251  # the blocking call


async def healthy(seconds: float) -> None:
    await asyncio.sleep(seconds)


def _stall_lines(
    caplog: pytest.LogCaptureFixture,
) -> tuple[list[re.Match[str]], list[re.Match[str]]]:
    starts, ends = [], []
    for record in caplog.records:
        if record.name != "asyncbridge" or record.levelno != logging.WARNING:
            continue
        text = record.getMessage()
        if (m := START.search(text)) is not None:
            starts.append(m)
        elif (m := END.search(text)) is not None:
            ends.append(m)
    return starts, ends


def _wait_for(predicate: object, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.01)
    return bool(predicate())  # type: ignore[operator]


@pytest.fixture
def warnings_(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    with caplog.at_level(logging.WARNING, logger="asyncbridge"):
        yield caplog


def test_a_time_sleep_coroutine_is_named_with_its_file_line_and_function(
    warnings_: pytest.LogCaptureFixture,
) -> None:
    with fresh_bridge(stall_warning=0.3) as bridge:
        bridge.run_soon(blocks_the_loop(1.2, secret="hunter2-token"))
        assert bridge.drain(timeout=10)
        assert _wait_for(lambda: len(_stall_lines(warnings_)[1]) == 1)
        stats = bridge.stats()
    starts, ends = _stall_lines(warnings_)
    assert len(starts) == 1 and len(ends) == 1
    pid, seconds, coroutine, filename, lineno, function = starts[0].groups()
    assert int(pid) == os.getpid()
    assert coroutine == "blocks_the_loop"
    assert (filename, int(lineno), function) == (
        str(HERE),
        _line_of("the blocking call"),
        "blocks_the_loop",
    )
    assert 0.3 <= float(seconds) < 1.2  # logged while the stall went on, once past the threshold
    total = float(ends[0].group(2))
    # Within a heartbeat (30 ms here) below; above, a loaded machine may delay the first beat.
    assert 0.9 <= total <= 1.2 + 2.0, total
    assert ends[0].group(3) == "blocks_the_loop"
    assert stats.stalls == 1
    assert 0.9 <= stats.longest_stall <= 1.2 + 2.0
    # Names and places only: the coroutine's arguments never reach the log.
    assert "hunter2" not in warnings_.text


def test_a_healthy_loop_under_load_logs_no_stall_and_counts_none(
    warnings_: pytest.LogCaptureFixture,
) -> None:
    with fresh_bridge(stall_warning=0.5, max_concurrency=200) as bridge:

        def feed() -> None:
            for _ in range(500):
                assert bridge.run_soon(healthy(0.002))
                time.sleep(0.0005)

        threads = [threading.Thread(target=feed) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert bridge.drain(timeout=20)
        stats = bridge.stats()
    assert stats.completed == 2000
    assert_invariant(stats)
    assert stats.stalls == 0 and stats.longest_stall == 0.0
    assert _stall_lines(warnings_) == ([], [])


def test_each_stall_is_one_episode_and_the_longest_is_kept(
    warnings_: pytest.LogCaptureFixture,
) -> None:
    with fresh_bridge(stall_warning=0.25) as bridge:
        for seconds in (0.7, 1.4):
            bridge.run_soon(blocks_the_loop(seconds))
            assert bridge.drain(timeout=10)
            time.sleep(0.3)  # a healthy stretch between the two
        expected = 2
        assert _wait_for(lambda: len(_stall_lines(warnings_)[1]) == expected)
        stats = bridge.stats()
    starts, ends = _stall_lines(warnings_)
    assert (len(starts), len(ends)) == (2, 2)
    totals = [float(m.group(2)) for m in ends]
    assert 0.45 <= totals[0] <= 0.7 + 2.0 and 1.15 <= totals[1] <= 1.4 + 2.0, totals
    assert stats.stalls == 2
    assert stats.longest_stall == pytest.approx(max(totals), abs=0.06)


def test_stall_warning_none_turns_it_off_and_configure_turns_it_on_at_once(
    warnings_: pytest.LogCaptureFixture,
) -> None:
    with fresh_bridge(stall_warning=None) as bridge:
        bridge.run_soon(blocks_the_loop(0.8))
        assert bridge.drain(timeout=10)
        assert bridge.stats().stalls == 0
        assert bridge._rt.watch is None  # no heartbeat, nothing watched
        bridge.configure(stall_warning=0.25)
        time.sleep(0.1)  # the heartbeat starts
        bridge.run_soon(blocks_the_loop(0.8))
        assert bridge.drain(timeout=10)
        assert _wait_for(lambda: len(_stall_lines(warnings_)[1]) == 1)
        assert bridge.stats().stalls == 1
    assert len(_stall_lines(warnings_)[0]) == 1


def test_the_watchdog_thread_ends_with_the_last_loop_it_watches() -> None:
    # In a fresh interpreter: in this one, other tests' bridges may still be watched.
    code = textwrap.dedent(
        """
        import threading, asyncbridge

        def watchdogs():
            return [t for t in threading.enumerate() if t.name.startswith("asyncbridge-watchdog")]

        b = asyncbridge.Bridge(stall_warning=1.0)
        b.start()
        during = len(watchdogs())
        b.shutdown(2)
        print(during, len(watchdogs()))
        """
    )
    done = run_python(code, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["1", "0"]


def test_stall_warning_comes_from_the_environment_and_is_validated() -> None:
    assert options_from_env({"ASYNCBRIDGE_STALL_WARNING": "2.5"}) == {"stall_warning": 2.5}
    assert options_from_env({"ASYNCBRIDGE_STALL_WARNING": "none"}) == {"stall_warning": None}
    assert options_from_env({"ASYNCBRIDGE_STALL_WARNING": ""}) == {"stall_warning": None}
    with pytest.raises(ValueError, match="ASYNCBRIDGE_STALL_WARNING must be a number of seconds"):
        options_from_env({"ASYNCBRIDGE_STALL_WARNING": "1s"})
    with pytest.raises(ValueError, match="ASYNCBRIDGE_STALL_WARNING"):
        options_from_env({"ASYNCBRIDGE_STALL_WARNING": "0"})
    assert Options().stall_warning == 1.0
    with pytest.raises(
        ValueError, match="stall_warning must be a finite number of seconds greater"
    ):
        Bridge(stall_warning=0)
    with pytest.raises(ValueError, match="stall_warning"):
        Bridge(stall_warning=float("inf"))
    with pytest.raises(TypeError, match="stall_warning must be a number of seconds, got str"):
        Bridge(stall_warning="1")


def test_the_heartbeat_is_a_tenth_of_the_threshold_within_bounds() -> None:
    assert _watchdog.beat_interval(1.0) == pytest.approx(0.1)
    assert _watchdog.beat_interval(0.01) == 0.01
    assert _watchdog.beat_interval(60.0) == 0.25


@pytest.mark.filterwarnings(FORK_WARNING)
def test_a_forked_child_watches_its_own_loop_and_the_parent_keeps_its_own() -> None:
    bridge = Bridge(stall_warning=0.25)
    try:
        bridge.run_soon(healthy(0))
        assert bridge.drain(timeout=5)
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:
            try:
                os.close(read_fd)
                bridge.run_soon(blocks_the_loop(0.8))
                bridge.drain(timeout=10)
                deadline = time.monotonic() + 5
                while bridge.stats().longest_stall == 0 and time.monotonic() < deadline:
                    time.sleep(0.01)
                stats = bridge.stats()
                report = bridge.shutdown(2)
                facts = {"stalls": stats.stalls, "longest": stats.longest_stall, "pid": stats.pid,
                         "clean": report.clean}  # fmt: skip
                os.write(write_fd, json.dumps(facts).encode())
            finally:
                os._exit(0)
        os.close(write_fd)
        assert wait_child(pid, 30) == 0
        with os.fdopen(read_fd) as pipe:
            facts = json.loads(pipe.read())
        assert facts["pid"] == pid and facts["stalls"] == 1 and facts["clean"] is True
        assert 0.5 <= facts["longest"] <= 0.8 + 2.0
        assert bridge.stats().stalls == 0  # the parent's loop never stalled
        bridge.run_soon(blocks_the_loop(0.8))  # and its own watchdog still works
        assert bridge.drain(timeout=10)
        assert _wait_for(lambda: bridge.stats().longest_stall > 0)
        assert bridge.stats().stalls == 1
    finally:
        bridge.shutdown(5)


def test_a_loop_that_ends_outside_shutdown_is_never_silent(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The core logs a loop thread that dies and resumes a stray loop.stop(); this is the
    # watchdog's own safety net, for a loop that ends with neither noticing.
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    w = _watchdog.watch(_watchdog.Watch(loop, lambda: 0.2, lambda: False, thread=thread))
    try:
        with caplog.at_level(logging.ERROR, logger="asyncbridge"):
            loop.call_soon_threadsafe(loop.stop)
            thread.join(5)
            assert _wait_for(lambda: w.ended)
        assert [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR] == [
            f"asyncbridge: the loop of pid {os.getpid()} ended outside shutdown (its thread died "
            "or a coroutine called loop.stop()); work handed to it no longer runs"
        ]
    finally:
        _watchdog.unwatch(w)
        loop.close()


def test_a_stray_loop_stop_is_left_to_the_core_and_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def stops_the_loop() -> None:
        asyncio.get_running_loop().stop()

    with fresh_bridge(stall_warning=0.2) as bridge, caplog.at_level(logging.ERROR, "asyncbridge"):
        bridge.run_soon(stops_the_loop())
        assert bridge.drain(timeout=5)
        time.sleep(0.5)  # several looks of the watchdog
        assert bridge.stats().loop_restarts == 1
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "called loop.stop()" in errors[0], errors
