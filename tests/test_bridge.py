"""The Bridge: hand-off, results, shutdown, backpressure, timeouts, hooks, accounting."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import importlib.util
import logging
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from asyncbridge import (
    AsyncBridgeError,
    BacklogFull,
    Bridge,
    BridgeClosed,
    _admission,
    _bridge,
    _scheduler,
)
from asyncbridge._bridge import SHUTDOWN_MARGIN

from .helpers import assert_invariant, fresh_bridge, sleeper

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="none")


async def record(into: list[Any], value: Any) -> None:
    into.append(value)


async def fail(message: str) -> None:
    raise ValueError(message)


async def forever() -> None:
    await asyncio.Event().wait()


# -- run_soon ----------------------------------------------------------------------------------


def test_run_soon_starts_the_loop_lazily_and_runs_the_coroutine() -> None:
    with fresh_bridge() as bridge:
        assert not bridge.stats().loop_running
        seen: list[int] = []
        assert bridge.run_soon(record(seen, 1)) is True
        assert bridge.drain(5)
        assert seen == [1]
        s = bridge.stats()
        assert (s.accepted, s.completed, s.pending, s.running) == (1, 1, 0, 0)
        assert s.loop_running


def test_loop_thread_is_a_daemon_named_after_the_pid() -> None:
    with fresh_bridge() as bridge:
        bridge.start()
        threads = [t for t in threading.enumerate() if t.name.startswith("asyncbridge-")]
        mine = [t for t in threads if t is bridge._rt.thread]
        assert len(mine) == 1
        assert mine[0].daemon
        assert mine[0].name == f"asyncbridge-{bridge.stats().pid}"


def test_start_is_idempotent() -> None:
    with fresh_bridge() as bridge:
        bridge.start()
        loop = bridge.get_loop()
        bridge.start()
        assert bridge.get_loop() is loop


def test_the_coroutine_sees_the_callers_context_variables() -> None:
    seen: list[str] = []

    async def read_context() -> None:
        seen.append(request_id.get())

    with fresh_bridge() as bridge:
        token = request_id.set("req-42")
        try:
            bridge.run_soon(read_context())
        finally:
            request_id.reset(token)
        bridge.run_soon(read_context())
        assert bridge.drain(5)
    assert seen == ["req-42", "none"]


def test_a_failing_coroutine_is_logged_once_counted_and_passed_to_on_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    errors: list[tuple[BaseException, str]] = []
    with fresh_bridge(on_error=lambda exc, name: errors.append((exc, name))) as bridge:
        with caplog.at_level(logging.ERROR, logger="asyncbridge"):
            bridge.run_soon(fail("boom"))
            assert bridge.drain(5)
        s = bridge.stats()
        assert (s.accepted, s.failed, s.completed) == (1, 1, 0)
    failures = [r for r in caplog.records if "failed" in r.getMessage()]
    assert len(failures) == 1
    assert "fail" in failures[0].getMessage()
    assert failures[0].exc_info is not None and "boom" in str(failures[0].exc_info[1])
    assert len(errors) == 1
    assert isinstance(errors[0][0], ValueError) and errors[0][1] == "fail"


def test_logs_name_the_coroutine_but_never_show_its_arguments(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def send(token: str) -> None:
        raise ConnectionError("refused")

    with fresh_bridge(max_pending=1) as bridge, caplog.at_level(logging.DEBUG, "asyncbridge"):
        bridge.run_soon(send("s3cr3t-token"))
        assert bridge.drain(5)
        bridge._rt.running = 1  # make the backlog look full for one refusal
        try:
            bridge.run_soon(send("s3cr3t-token"))
        finally:
            bridge._rt.running = 0
    text = caplog.text
    assert "send" in text
    assert "s3cr3t-token" not in text


def test_an_on_error_hook_that_raises_is_logged_and_swallowed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def bad_hook(exc: BaseException, name: str) -> None:
        raise RuntimeError("hook broke")

    with fresh_bridge(on_error=bad_hook) as bridge, caplog.at_level(logging.ERROR, "asyncbridge"):
        bridge.run_soon(fail("x"))
        assert bridge.drain(5)
        assert bridge.run(sleeper(0, "still alive"), timeout=5) == "still alive"
    assert any("on_error hook" in r.getMessage() for r in caplog.records)


def test_sixteen_threads_calling_run_soon_at_once_are_counted_exactly() -> None:
    per_thread = 2_000
    done: list[int] = []
    barrier = threading.Barrier(16)

    async def job(i: int) -> None:
        done.append(i)

    def hammer() -> None:
        barrier.wait(5)
        for i in range(per_thread):
            assert bridge.run_soon(job(i))

    with fresh_bridge(max_pending=100_000) as bridge:
        threads = [threading.Thread(target=hammer) for _ in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert bridge.drain(30)
        s = bridge.stats()
        assert s.accepted == s.completed == len(done) == 16 * per_thread
        assert s.dropped_total == 0
        assert_invariant(s)


# -- submit and run ----------------------------------------------------------------------------


def test_submit_returns_a_future_with_the_result() -> None:
    with fresh_bridge() as bridge:
        future = bridge.submit(sleeper(0.01, 7))
        assert isinstance(future, concurrent.futures.Future)
        assert future.result(5) == 7


def test_submit_carries_the_exception_and_counts_a_failure_without_logging(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with fresh_bridge() as bridge, caplog.at_level(logging.ERROR, "asyncbridge"):
        future = bridge.submit(fail("nope"))
        with pytest.raises(ValueError, match="nope"):
            future.result(5)
        assert bridge.stats().failed == 1
    assert not [r for r in caplog.records if "failed" in r.getMessage()]


def test_cancelling_a_submitted_future_cancels_the_running_coroutine() -> None:
    started = threading.Event()

    async def waits() -> None:
        started.set()
        await asyncio.sleep(30)

    with fresh_bridge() as bridge:
        future = bridge.submit(waits())
        assert started.wait(5)
        assert future.cancel()
        with pytest.raises(concurrent.futures.CancelledError):
            future.result(5)
        assert future.cancelled()  # a proper cancelled state, not an exception in disguise
        assert bridge.drain(5)
        s = bridge.stats()
        assert (s.cancelled, s.running) == (1, 0)


def test_run_returns_the_result_and_raises_the_coroutines_own_exception() -> None:
    with fresh_bridge() as bridge:
        assert bridge.run(sleeper(0.01, "ok")) == "ok"
        with pytest.raises(ValueError, match="mine"):
            bridge.run(fail("mine"))


def test_run_timeout_cancels_the_task_and_raises_timeout_error() -> None:
    with fresh_bridge() as bridge:
        with pytest.raises(TimeoutError):
            bridge.run(sleeper(30), timeout=0.1)
        assert bridge.drain(5)
        s = bridge.stats()
        assert (s.cancelled, s.running, s.pending) == (1, 0, 0)


def test_run_from_the_loop_thread_fails_at_once_instead_of_deadlocking() -> None:
    with fresh_bridge() as bridge:

        async def nested() -> str:
            try:
                bridge.run(sleeper(0, "never"))
            except AsyncBridgeError as exc:
                return str(exc)
            return "no error"

        message = bridge.run(nested(), timeout=5)
        assert "await" in message and "loop thread" in message


def test_run_inside_another_running_loop_says_to_await() -> None:
    with fresh_bridge() as bridge:

        async def in_other_loop() -> None:
            bridge.run(sleeper(0))

        with pytest.raises(AsyncBridgeError, match="await"):
            asyncio.run(in_other_loop())


# -- shutdown ----------------------------------------------------------------------------------


def test_shutdown_drains_a_thousand_slow_coroutines_when_the_deadline_allows() -> None:
    bridge = Bridge(max_concurrency=None)
    for _ in range(1000):
        assert bridge.run_soon(sleeper(0.2))
    report = bridge.shutdown(timeout=10)
    s = report.stats
    assert (s.accepted, s.completed, s.cancelled, s.pending, s.running) == (1000, 1000, 0, 0, 0)
    assert report.clean and report.abandoned == 0
    assert report.elapsed < 10
    assert_invariant(s)


def test_shutdown_cancels_and_names_what_the_deadline_does_not_allow(
    caplog: pytest.LogCaptureFixture,
) -> None:
    bridge = Bridge(max_concurrency=5)
    for _ in range(5):
        bridge.run_soon(sleeper(0.05))
    for _ in range(3):
        bridge.run_soon(forever())
    for _ in range(4):
        bridge.run_soon(sleeper(0.01))  # queued behind the concurrency limit
    with caplog.at_level(logging.INFO, "asyncbridge"):
        report = bridge.shutdown(timeout=0.5)
    s = report.stats
    assert s.accepted == 12
    assert s.completed == 9
    assert s.cancelled == 3
    assert report.cancelled_names == ("forever",) * 3
    assert not report.clean
    assert_invariant(s)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert any("forever x3" in r.getMessage() for r in warnings)


def test_queued_work_never_started_is_cancelled_counted_and_closed_at_the_deadline() -> None:
    bridge = Bridge(max_concurrency=1)
    bridge.run_soon(forever())
    for _ in range(10):
        bridge.run_soon(sleeper(0))
    report = bridge.shutdown(timeout=0.2)
    s = report.stats
    assert (s.accepted, s.cancelled, s.completed) == (11, 11, 0)
    assert sorted(report.cancelled_names) == ["forever"] + ["sleeper"] * 10
    assert_invariant(s)


def test_shutdown_is_bounded_even_when_a_coroutine_blocks_the_loop() -> None:
    async def blocks() -> None:
        time.sleep(4)  # noqa: ASYNC251 - blocking the loop is the point

    bridge = Bridge()
    bridge.run_soon(blocks())
    time.sleep(0.1)
    started = time.monotonic()
    report = bridge.shutdown(timeout=0.5)
    elapsed = time.monotonic() - started
    assert elapsed < 0.5 + SHUTDOWN_MARGIN + 1.0
    assert report.abandoned == 1
    assert report.stats.running == 1
    assert_invariant(report.stats)


def test_shutdown_is_idempotent_and_returns_the_same_report() -> None:
    bridge = Bridge()
    bridge.run_soon(sleeper(0))
    first = bridge.shutdown(5)
    assert bridge.shutdown(5) is first


def test_shutdown_of_a_bridge_that_never_started_is_empty_and_closes_it() -> None:
    bridge = Bridge()
    report = bridge.shutdown(1)
    assert report.stats.accepted == 0 and report.clean
    assert bridge.run_soon(sleeper(0)) is False
    assert bridge.stats().dropped == {"full": 0, "closed": 1}


def test_after_shutdown_run_soon_drops_and_submit_raises(
    caplog: pytest.LogCaptureFixture,
) -> None:
    dropped: list[tuple[str, str]] = []
    bridge = Bridge(on_drop=lambda name, reason: dropped.append((name, reason)))
    bridge.run_soon(sleeper(0))
    bridge.shutdown(5)
    with caplog.at_level(logging.WARNING, "asyncbridge"):
        assert bridge.run_soon(sleeper(0)) is False
        assert bridge.run_soon(sleeper(0)) is False
    with pytest.raises(BridgeClosed):
        bridge.submit(sleeper(0))
    with pytest.raises(BridgeClosed):
        bridge.start()
    s = bridge.stats()
    assert s.dropped == {"full": 0, "closed": 3}
    assert s.accepted == 1
    assert dropped == [("sleeper", "closed")] * 3
    # the warning is rate-limited: one for the two run_soon drops
    assert len([r for r in caplog.records if "dropped" in r.getMessage()]) == 1


def test_shutdown_closes_async_generators_and_waits_for_the_default_executor() -> None:
    closed: list[str] = []
    executor_done = threading.Event()
    kept: list[AsyncIterator[int]] = []  # a live reference: only shutdown_asyncgens can close it

    async def agen() -> AsyncIterator[int]:
        try:
            yield 1
            yield 2
        finally:
            closed.append("agen")

    def slow_job() -> None:
        time.sleep(0.3)
        executor_done.set()

    async def uses_both() -> None:
        gen = agen()
        kept.append(gen)
        await gen.__anext__()
        asyncio.get_running_loop().run_in_executor(None, slow_job)  # not awaited

    bridge = Bridge()
    bridge.run(uses_both(), timeout=5)
    assert closed == [] and not executor_done.is_set()
    report = bridge.shutdown(5)
    assert closed == ["agen"]
    assert executor_done.is_set()  # shutdown_default_executor waited for the job
    assert report.clean
    assert not report.stats.loop_running


def test_shutdown_from_the_loop_thread_closes_admission_without_deadlock() -> None:
    bridge = Bridge()

    async def shut() -> bool:
        bridge.shutdown(1)
        return bridge.run_soon(sleeper(0))

    assert bridge.run(shut(), timeout=5) is False
    assert bridge.shutdown(5).stats.completed == 1


# -- backpressure ------------------------------------------------------------------------------


def test_full_backlog_drops_by_default_closes_the_coroutine_and_calls_on_drop(
    caplog: pytest.LogCaptureFixture,
) -> None:
    dropped: list[tuple[str, str]] = []
    with fresh_bridge(
        0.1, max_pending=3, max_concurrency=1, on_drop=lambda n, r: dropped.append((n, r))
    ) as bridge:
        with caplog.at_level(logging.WARNING, "asyncbridge"):
            results = [bridge.run_soon(forever()) for _ in range(5)]
        assert results == [True, True, True, False, False]
        s = bridge.stats()
        assert s.accepted == 3 and s.dropped == {"full": 2, "closed": 0}
        assert dropped == [("forever", "full")] * 2
        assert_invariant(s)
    # The first refusal is logged in full, then one summary line (at shutdown) counts them all.
    lines = [r.getMessage() for r in caplog.records if "backlog is full" in r.getMessage()]
    assert len(lines) == 2
    assert lines[0].startswith("asyncbridge dropped forever: the backlog is full")
    assert lines[1].startswith("asyncbridge dropped 2 in the last ")
    assert lines[1].endswith(": forever x2")


def test_full_backlog_raises_backlog_full_when_asked() -> None:
    with fresh_bridge(0.1, max_pending=1, on_full="raise") as bridge:
        assert bridge.run_soon(forever())
        with pytest.raises(BacklogFull, match="max_pending"):
            bridge.run_soon(forever())
        with pytest.raises(BacklogFull):
            bridge.submit(forever())
        assert bridge.stats().dropped["full"] == 2


def test_submit_raises_backlog_full_even_under_the_drop_policy() -> None:
    with fresh_bridge(0.1, max_pending=1) as bridge:
        bridge.run_soon(forever())
        with pytest.raises(BacklogFull):
            bridge.submit(forever())


def test_block_policy_waits_for_room_then_accepts() -> None:
    with fresh_bridge(max_pending=2, on_full="block", block_timeout=5) as bridge:
        bridge.run_soon(sleeper(0.2))
        bridge.run_soon(sleeper(0.2))
        started = time.monotonic()
        assert bridge.run_soon(sleeper(0)) is True
        waited = time.monotonic() - started
        assert 0.1 < waited < 5
        assert bridge.drain(5)
        assert bridge.stats().completed == 3


def test_block_policy_drops_after_block_timeout() -> None:
    with fresh_bridge(0.1, max_pending=1, on_full="block", block_timeout=0.2) as bridge:
        bridge.run_soon(forever())
        started = time.monotonic()
        assert bridge.run_soon(forever()) is False
        assert time.monotonic() - started >= 0.2
        assert bridge.stats().dropped["full"] == 1


def test_max_concurrency_bounds_running_coroutines_and_keeps_order() -> None:
    order: list[int] = []
    peak = 0
    running = 0

    async def job(i: int) -> None:
        nonlocal peak, running
        running += 1
        peak = max(peak, running)
        order.append(i)
        await asyncio.sleep(0.01)
        running -= 1

    with fresh_bridge(max_concurrency=3) as bridge:
        for i in range(30):
            bridge.run_soon(job(i))
        assert bridge.drain(10)
    assert peak == 3
    assert order == list(range(30))


# -- task_timeout ------------------------------------------------------------------------------


def test_task_timeout_is_enforced_counted_and_reported() -> None:
    errors: list[tuple[BaseException, str]] = []
    with fresh_bridge(task_timeout=0.1, on_error=lambda e, n: errors.append((e, n))) as bridge:
        bridge.run_soon(forever())
        bridge.run_soon(sleeper(0.01))
        assert bridge.drain(5)
        s = bridge.stats()
        assert (s.timed_out, s.completed, s.cancelled) == (1, 1, 0)
        future = bridge.submit(forever())
        with pytest.raises(TimeoutError):
            future.result(5)
    assert len(errors) == 1
    assert isinstance(errors[0][0], TimeoutError) and errors[0][1] == "forever"


def test_configure_changes_options_and_rejects_bad_ones() -> None:
    with fresh_bridge() as bridge:
        bridge.configure(max_pending=5, on_full="raise")
        assert bridge.options.max_pending == 5
        with pytest.raises(TypeError, match="unknown asyncbridge option 'max_pendng'"):
            bridge.configure(max_pendng=5)
        with pytest.raises(ValueError, match="max_pending"):
            bridge.configure(max_pending=0)
        assert bridge.options.max_pending == 5


@pytest.mark.asyncio
async def test_async_code_awaits_a_submitted_future_and_is_refused_run() -> None:
    with fresh_bridge() as bridge:
        assert await asyncio.wrap_future(bridge.submit(sleeper(0.01, "awaited"))) == "awaited"
        with pytest.raises(AsyncBridgeError, match="just `await` the coroutine"):
            bridge.run(sleeper(0))


def test_current_names_the_bridge_whose_loop_runs_here_even_after_idents_are_reused() -> None:
    for _ in range(5):  # each old loop thread's ident is free for the next one to reuse
        with fresh_bridge() as bridge:
            assert Bridge.current() is None
            assert bridge.run(_current(), timeout=5) is bridge
            assert not bridge.in_loop_thread()


def test_current_tells_two_live_bridges_apart() -> None:
    with fresh_bridge() as first, fresh_bridge() as second:
        assert first.run(_current(), timeout=5) is first
        assert second.run(_current(), timeout=5) is second


async def _current() -> Bridge | None:
    return Bridge.current()


def test_shutdown_can_leave_logging_the_report_to_the_caller(
    caplog: pytest.LogCaptureFixture,
) -> None:
    quiet, loud = Bridge(), Bridge()
    quiet.run_soon(sleeper(0))
    loud.run_soon(sleeper(0))
    with caplog.at_level(logging.INFO, "asyncbridge"):
        quiet_report = quiet.shutdown(5, log=False)
        assert not caplog.records
        loud.shutdown(5)
    assert quiet_report.stats.completed == 1
    assert [r.getMessage().split(" in ")[0] for r in caplog.records] == [
        f"asyncbridge shutdown of pid {loud.stats().pid}"
    ]


# -- review findings: races around shutdown, BaseException, cancellation ---------------------


def test_a_coroutine_raising_system_exit_is_a_failure_and_the_loop_lives_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def exits() -> None:
        raise SystemExit(3)

    with fresh_bridge() as bridge, caplog.at_level(logging.ERROR, "asyncbridge"):
        bridge.run_soon(exits())
        assert bridge.drain(5)
        assert bridge.run(sleeper(0, "alive"), timeout=5) == "alive"
        s = bridge.stats()
        assert (s.failed, s.completed, s.running) == (1, 1, 0)
        assert s.loop_running
    assert any("exits failed" in r.getMessage() for r in caplog.records)


def test_a_task_that_finished_as_its_timer_fired_is_not_timed_out() -> None:
    with fresh_bridge(task_timeout=5) as bridge:

        async def finished_task() -> bool:
            task = asyncio.ensure_future(sleeper(0))
            await task
            _scheduler.expire(bridge._rt, task)  # the timer's callback, one iteration late
            return task in bridge._rt.expired

        assert bridge.run(finished_task(), timeout=5) is False


def test_a_caller_blocked_for_room_when_shutdown_begins_is_dropped_as_closed() -> None:
    bridge = Bridge(max_pending=1, on_full="block", block_timeout=5)
    bridge.run_soon(sleeper(0.3))
    results: list[bool] = []
    blocked = threading.Thread(target=lambda: results.append(bridge.run_soon(sleeper(0))))
    blocked.start()
    time.sleep(0.1)
    report = bridge.shutdown(2)
    blocked.join(5)
    assert results == [False]
    s = report.stats if report.stats.dropped["closed"] else bridge.stats()
    assert (s.accepted, s.completed, s.cancelled) == (1, 1, 0)
    assert bridge.stats().dropped == {"full": 0, "closed": 1}


def test_drains_that_give_up_on_a_busy_bridge_leave_no_waiter_behind() -> None:
    # A health check polling drain(0) on a bridge that never goes idle: each call's waiter is
    # taken back, so memory does not grow with the calls.
    with fresh_bridge() as bridge:
        stop = asyncio.Event()
        assert bridge.run_soon(stop.wait())
        assert [bridge.drain(0) for _ in range(2000)] == [False] * 2000
        assert bridge.drain(0.05) is False
        bridge.run(asyncio.sleep(0), timeout=5)  # the loop has run every take-back by now
        assert bridge._rt.idle_waiters == []
        bridge.get_loop().call_soon_threadsafe(stop.set)
        assert bridge.drain(5) is True


def test_drain_returns_when_shutdown_gives_up_on_a_coroutine_that_ignores_cancellation() -> None:
    async def stubborn() -> None:
        for _ in range(40):
            try:
                await asyncio.sleep(0.05)
            except asyncio.CancelledError:
                pass

    bridge = Bridge()
    bridge.run_soon(stubborn())
    drained: list[bool] = []
    waiter = threading.Thread(target=lambda: drained.append(bridge.drain(None)))
    waiter.start()
    report = bridge.shutdown(0.1)
    waiter.join(5)
    assert not waiter.is_alive()
    assert drained == [False]  # it returned, and says the bridge did not go idle
    assert report.abandoned == 1
    assert "ignored cancellation" in str(report)


@pytest.fixture
def back_off_sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The back-off's sleeps, recorded instead of slept."""
    sleeps: list[float] = []
    monkeypatch.setattr(
        _admission, "time", SimpleNamespace(sleep=sleeps.append, monotonic=time.monotonic)
    )
    return sleeps


def test_a_caller_backs_off_only_while_the_loop_is_starved(
    back_off_sleeps: list[float], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The parked loop stands in for a starved one: every look at it says "starved" (the look
    # itself, which tells the two apart, has its own tests below).
    def looks_starved(rt: object) -> bool:
        back_off_sleeps.append(_admission.BACKOFF)  # the look sleeps one back-off
        return False

    monkeypatch.setattr(_admission, "_waits_on_its_own", looks_starved)
    every = _bridge._LOOK_EVERY + 1
    assert _bridge._BACKLOG_BEFORE_BACKOFF == every  # the first look comes with the first backlog
    parked = threading.Event()
    with fresh_bridge() as bridge:
        bridge.get_loop().call_soon_threadsafe(parked.wait, 5)  # the loop cannot pull
        rt = bridge._rt

        def hand_off_until(backlog: int) -> None:
            """Hand off until a call has found ``backlog`` jobs waiting (before its own)."""
            while len(rt.inbox) < backlog + 1:
                bridge.run_soon(sleeper(0))

        def starved() -> bool:  # what the last look at the clock found
            return rt.starved

        try:
            bridge.run_soon(sleeper(0))  # queues the wake-up
            rt.scheduled_at = time.monotonic() + 60  # "just queued", however slow we are
            hand_off_until(2 * every)  # two looks at the clock
            assert back_off_sleeps == []  # a backlog, but the wake-up is not overdue yet
            rt.scheduled_at = time.monotonic() - 0.02  # overdue: the loop is starved
            hand_off_until(3 * every - 1)
            assert back_off_sleeps == []  # nobody looked: only every 8th call reads the clock
            bridge.run_soon(sleeper(0))  # the look: starved, so it backs off
            assert starved()
            bridge.submit(sleeper(0))  # no look, but the finding stands: it backs off too
            assert back_off_sleeps == [_admission.BACKOFF] * 2
            rt.scheduled_at = time.monotonic() - 1.0  # far overdue: blocked, not starved
            hand_off_until(4 * every)  # up to the next look, which clears the finding
            assert not starved()
            slept = len(back_off_sleeps)
            assert slept <= 2 + every - 1  # the finding outlived the give-up by 7 calls at most
            hand_off_until(5 * every - 1)
            assert len(back_off_sleeps) == slept
        finally:
            parked.set()
        assert bridge.drain(5)
        assert not starved()  # the loop's pull clears it
        assert bridge.stats().completed == 5 * every


def test_a_finding_about_an_earlier_wake_up_does_not_make_callers_sleep(
    back_off_sleeps: list[float],
) -> None:
    every = _bridge._LOOK_EVERY + 1
    parked = threading.Event()
    with fresh_bridge(max_concurrency=1) as bridge:
        bridge.run_soon(sleeper(0.5))  # takes the only slot: later jobs stay in the inbox
        rt = bridge._rt

        def pulled() -> bool:
            deadline = time.monotonic() + 5
            while rt.scheduled and time.monotonic() < deadline:
                time.sleep(0.001)
            return not rt.scheduled

        assert pulled() and rt.running == 1
        while len(rt.inbox) < every + 3:
            bridge.run_soon(sleeper(0))
        assert pulled() and len(rt.inbox) == every + 3
        rt.starved = True  # left by a caller that looked just as the loop pulled
        back_off_sleeps.clear()  # whatever a slow machine made the set-up do
        bridge.get_loop().call_soon_threadsafe(parked.wait, 5)  # the loop cannot pull
        try:
            bridge.run_soon(sleeper(0))  # queues a new wake-up with a backlog already waiting
            while len(rt.inbox) < 2 * every:  # more hand-offs, short of the next look
                bridge.run_soon(sleeper(0))
            assert back_off_sleeps == []  # the finding was about the earlier wake-up
        finally:
            parked.set()
        assert bridge.drain(5)


def test_a_blocked_loop_costs_callers_one_back_off_per_wake_up(
    back_off_sleeps: list[float],
) -> None:
    # A loop busy with its own work never pulls, however long callers sleep: the first
    # back-off for a wake-up looks at the loop thread, finds it blocked, and nobody sleeps for
    # that wake-up again (all callers together), though it is overdue by less than GIVE_UP.
    parked, entered = threading.Event(), threading.Event()
    calls = 5_000

    def park() -> None:  # the loop's own work: it waits on a lock, which no back-off can help
        entered.set()
        parked.wait(5)

    with fresh_bridge(max_pending=calls + 10) as bridge:
        bridge.get_loop().call_soon_threadsafe(park)  # the loop cannot pull
        assert entered.wait(5)
        rt = bridge._rt
        try:
            bridge.run_soon(sleeper(0))  # queues the wake-up
            rt.scheduled_at = time.monotonic() - 0.01  # overdue: it looks starved
            for _ in range(calls - 1):
                bridge.run_soon(sleeper(0))
                rt.scheduled_at = min(rt.scheduled_at, time.monotonic() - 0.01)
            assert back_off_sleeps == [_admission.BACKOFF]  # the look's own
            assert not rt.starved
        finally:
            parked.set()
        assert bridge.drain(10)
        assert rt.backoffs == 0  # the pull starts the count again for the next wake-up
        stats = bridge.stats()
        assert stats.accepted == stats.completed == calls


def test_an_interrupted_wait_for_room_refuses_the_coroutine_and_counts_it() -> None:
    # A KeyboardInterrupt raised while run_soon(on_full="block") waits for room: the coroutine
    # was never accepted, so it is closed (no "never awaited" warning under -W error) and
    # counted as dropped, and the interruption reaches the caller.
    with fresh_bridge(max_pending=1, on_full="block", block_timeout=30) as bridge:
        assert bridge.run_soon(sleeper(0.5))
        interrupt = threading.Timer(0.1, _thread_interrupt_main)
        interrupt.start()
        started = time.monotonic()
        with pytest.raises(KeyboardInterrupt):
            bridge.run_soon(sleeper(0))
        assert time.monotonic() - started < 5
        interrupt.join()
        assert bridge.drain(5)
        stats = bridge.stats()
        assert (stats.accepted, stats.completed, stats.dropped["full"]) == (1, 1, 1)


def _thread_interrupt_main() -> None:
    import _thread

    _thread.interrupt_main()


def test_the_look_after_max_backoffs_tells_a_starved_loop_from_a_blocked_one() -> None:
    # Idle in its select (as a loop waiting for its turn at the GIL stands) or computing in a
    # coroutine: back-offs help, so it is not blocked. Inside a callback that waits on a lock:
    # blocked, and no back-off can help it.
    with fresh_bridge() as bridge:
        bridge.start()
        rt = bridge._rt
        assert rt.thread is not None and rt.thread.is_alive()
        assert bridge.drain(5)
        time.sleep(0.05)  # into its select
        assert not _admission._waits_on_its_own(rt)
        entered, release = threading.Event(), threading.Event()

        def park() -> None:
            entered.set()
            release.wait(5)

        bridge.get_loop().call_soon_threadsafe(park)
        assert entered.wait(5)
        time.sleep(0.05)  # from entered.set() into the wait
        try:
            assert _admission._waits_on_its_own(rt)
        finally:
            release.set()
        assert bridge.drain(5)

        async def compute() -> None:
            entered.set()
            deadline = time.monotonic() + 1.0
            while time.monotonic() < deadline and not release.is_set():
                sum(range(1000))  # pure Python: it needs the GIL, and its CPU clock moves

        entered.clear()
        release.clear()
        bridge.run_soon(compute())
        assert entered.wait(5)
        try:
            # A look watches the CPU clock for one 0.5 ms back-off; on a machine whose cores
            # are all taken by other processes the loop may get none in that window. Most of
            # five looks must see it compute.
            looks = [_admission._waits_on_its_own(rt) for _ in range(5)]
            assert looks.count(False) >= 3, looks
        finally:
            release.set()
        assert bridge.drain(5)


def test_the_look_knows_asyncio_by_its_path_not_by_a_file_name(tmp_path: Path) -> None:
    # An app module that happens to be called events.py (or selectors.py) is not asyncio's
    # own code: a loop blocked inside it is blocked, and callers stop backing off for it.
    # (A lock's acquire is C code: the loop thread's innermost Python frame stays in events.py.)
    (tmp_path / "events.py").write_text(
        "def hold(entered, lock):\n    entered.set()\n    lock.acquire(timeout=5)\n"
    )
    spec = importlib.util.spec_from_file_location("app_events", tmp_path / "events.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    entered, lock = threading.Event(), threading.Lock()
    lock.acquire()
    with fresh_bridge() as bridge:
        bridge.get_loop().call_soon_threadsafe(module.hold, entered, lock)
        assert entered.wait(5)
        time.sleep(0.05)  # from entered.set() into the acquire
        try:
            assert _admission._waits_on_its_own(bridge._rt)
        finally:
            lock.release()
        assert bridge.drain(5)
