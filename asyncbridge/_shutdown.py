"""Shutdown's work on one runtime: drain to a deadline, cancel the rest, stop the loop, report."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Coroutine

from ._inputs import coroutine_name
from ._log import logger
from ._runtime import ORPHANS, Runtime
from ._scheduler import cancel_unstarted, sweep, when_idle
from ._stats import ShutdownReport

__all__ = ["SHUTDOWN_MARGIN", "drain_runtime", "wait_in_slices"]

# How long shutdown may run past its drain deadline: cancelled tasks get half of it to unwind,
# async generators, close callbacks and the default executor share the rest, then the join.
SHUTDOWN_MARGIN = 1.0


def drain_runtime(rt: Runtime, started: float, deadline_s: float) -> ShutdownReport:
    """Close admission, wait for idle until the deadline, cancel and clean up, join the thread."""
    loop = rt.loop
    thread = rt.thread
    assert loop is not None and thread is not None
    rt.closed = True
    deadline = started + deadline_s
    idle = threading.Event()
    cleaned = threading.Event()
    if rt.dead or not thread.is_alive():  # the loop thread died (see run_loop)
        cleaned.set()  # nothing to wait for: nothing more will run
    else:
        try:
            loop.call_soon_threadsafe(when_idle, rt, idle.set)
            wait_in_slices(idle, deadline, lambda: rt.dead or not thread.is_alive())
            budget = SHUTDOWN_MARGIN * 0.8
            loop.call_soon_threadsafe(_begin_cleanup, rt, cleaned, budget)
        except RuntimeError:  # the loop is already closed (its thread died)
            cleaned.set()
    wait_in_slices(
        cleaned, deadline + SHUTDOWN_MARGIN * 0.9, lambda: rt.dead or not thread.is_alive()
    )
    thread.join(max(0.0, deadline + SHUTDOWN_MARGIN - time.monotonic()))
    rt.finished = True
    sweep(rt)
    stats = rt.snapshot()
    abandoned = stats.pending + stats.running
    names = rt.running_names() if abandoned else ()
    if abandoned:
        # Keep what is still running referenced: destroying a pending task would run its
        # code (finally blocks) from the garbage collector, at any later time.
        ORPHANS.append(rt)
    return ShutdownReport(
        stats,
        cancelled_names=tuple(rt.cancelled_names),
        abandoned=abandoned,
        abandoned_names=names,
        elapsed=time.monotonic() - started,
        timeout=deadline_s,
    )


def wait_in_slices(
    event: threading.Event, until: float | None, gone: Callable[[], bool], every: float = 0.05
) -> bool:
    """Wait for ``event`` until the monotonic time ``until`` (None: no limit), in slices.

    Stops early once ``gone()``: the loop that was to set the event stopped or died without
    doing so (a loop that stops drops the callbacks still queued in it). Returns whether the
    event is set.
    """
    while not event.wait(
        every if until is None else min(every, max(0.0, until - time.monotonic()))
    ):
        if gone() or (until is not None and time.monotonic() >= until):
            return event.is_set()
    return True


def _begin_cleanup(rt: Runtime, cleaned: threading.Event, budget: float) -> None:
    rt.loop.create_task(_cleanup(rt, cleaned, budget))  # type: ignore[union-attr]


async def _cleanup(rt: Runtime, cleaned: threading.Event, budget: float) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + budget
    rt.cleaning = True
    try:
        cancel_unstarted(rt)
        tasks = [t for t in rt.tasks if not t.done()]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=budget / 2)
        await _bounded(loop.shutdown_asyncgens(), end - loop.time())
        for callback in rt.close_callbacks:
            await _bounded(callback(), end - loop.time())
        await _bounded(loop.shutdown_default_executor(), end - loop.time())
    finally:
        cancel_unstarted(rt)  # whatever arrived while the steps above awaited
        waiters, rt.idle_waiters = rt.idle_waiters, []
        for waiter in waiters:  # drain() callers: nothing more will run here
            waiter()
        rt.stopping = True
        loop.stop()
        cleaned.set()


async def _bounded(awaitable: Coroutine[object, object, object], seconds: float) -> None:
    try:
        await asyncio.wait_for(awaitable, max(0.0, seconds))
    except TimeoutError:
        logger.warning("asyncbridge shutdown step timed out: %s", coroutine_name(awaitable))
    except Exception:
        logger.exception("asyncbridge shutdown step failed: %s", coroutine_name(awaitable))
