"""The loop side: the loop thread, pulling the inbox, starting tasks, and counting outcomes."""

from __future__ import annotations

import asyncio
import threading
import time
import weakref
from collections.abc import Callable, Coroutine
from typing import Any

from ._future import BridgeFuture
from ._inputs import coroutine_name
from ._log import call_hook, close_quietly, logger
from ._publish import publish_soon
from ._runtime import Item, Runtime

__all__ = [
    "LOOP_THREAD",
    "cancel_unstarted",
    "pull",
    "run_loop",
    "start_waiting",
    "sweep",
    "when_idle",
]

# In each bridge loop thread, `owner` is a weak reference to the bridge that runs it, so that
# Bridge.current() (called by the aiohttp helper for every request) is a lookup, not a scan.
LOOP_THREAD = threading.local()

_NO_LIMIT = 1 << 62
_monotonic = time.monotonic


def run_loop(rt: Runtime, owner: weakref.ref[Any]) -> None:
    """The loop thread's body: run the loop until shutdown stops it, then close it.

    A ``loop.stop()`` that shutdown did not ask for (a coroutine or a library calling it) must not
    silently end the bridge: the loop resumes at once, so every task and queued hand-off goes on
    as if nothing happened, and the event is logged and counted (``restarts``). A loop thread that
    ends in any other way closes admission, so later hand-offs are refused and counted instead
    of accepted into a loop that will never run them.
    """
    loop = rt.loop
    assert loop is not None
    LOOP_THREAD.owner = owner
    asyncio.set_event_loop(loop)
    try:
        while True:
            try:
                loop.run_forever()
            except (SystemExit, KeyboardInterrupt) as exc:
                # asyncio lets these escape run_forever after storing them on the task; keep
                # the loop alive: the task's done callback counts and reports the failure.
                logger.debug("asyncbridge loop resumed after a coroutine raised %r", exc)
                continue
            if rt.stopping:
                return  # stopped by shutdown
            rt.restarts += 1
            logger.error(
                "asyncbridge: something called loop.stop() on the bridge loop of pid %d (only "
                "shutdown() may stop it); the loop resumed and no work was lost (%d such stops "
                "so far)",
                rt.pid,
                rt.restarts,
            )
    except BaseException:
        logger.exception("asyncbridge loop thread died; admission is closed")
        rt.dead = rt.closed = True
        raise
    finally:
        try:
            loop.close()
        except Exception:
            logger.exception("asyncbridge could not close its event loop")
        if not rt.stopping:
            rt.dead = rt.closed = rt.finished = True
            sweep(rt)  # what waited can never start: count it cancelled, by name


def pull(rt: Runtime) -> None:
    """The coalesced wake-up callers queue: start what waits in the inbox."""
    first_handoff = rt.scheduled_at
    rt.scheduled = rt.starved = False
    rt.backoffs = 0
    if rt.timing is not None:
        rt.timing.pulled(rt.taken + len(rt.inbox), first_handoff)
    start_waiting(rt)


def start_waiting(rt: Runtime) -> None:
    """Start waiting work, oldest first, up to ``max_concurrency`` running at once."""
    inbox = rt.inbox
    if not inbox:
        return
    if rt.cleaning:
        cancel_unstarted(rt)
        return
    options = rt.options
    batch: list[Item] = []
    with rt.lock:
        rt.version += 1
        room = (options.max_concurrency or _NO_LIMIT) - rt.running
        while inbox and room > 0:
            batch.append(inbox.popleft())
            room -= 1
        rt.taken += len(batch)
        rt.running += len(batch)
        rt.version += 1
    if rt.timing is not None:
        rt.timing.took(rt.taken - len(batch), len(batch), _monotonic(), rt.scheduled_at)
    publish_soon(rt)
    create_task = rt.loop.create_task  # type: ignore[union-attr]
    tasks = rt.tasks
    timeout = options.task_timeout
    for coro, context, future in batch:
        if future is not None and not future.set_running_or_notify_cancel():
            close_quietly(coro)
            _count(rt, "cancelled")
            continue
        task = create_task(_job(rt, coro, future, timeout), context=context)
        tasks[coro] = task
        if future is not None:
            future._task = task
            if future._cancel_requested:  # cancel() ran before the task existed
                task.cancel()
    if rt.room_waiters:
        rt.notify_room()


async def _job(
    rt: Runtime,
    coro: Coroutine[Any, Any, Any],
    future: BridgeFuture[Any] | None,
    limit: float | None,
) -> None:
    """One accepted coroutine, run in its own task, counting its own outcome when it ends.

    Counting here, at the end of the task's last step, instead of in a done callback saves the
    callback's scheduling and a ``partial`` per job. Whatever the coroutine raises stays here:
    SystemExit and KeyboardInterrupt too, which asyncio would otherwise let out of the loop.
    """
    handle = task = None
    timing = rt.timing
    began = 0.0 if timing is None else _monotonic()
    if limit is not None:
        task = asyncio.current_task()
        assert task is not None
        handle = rt.loop.call_later(limit, expire, rt, task)  # type: ignore[union-attr]
    exc: BaseException | None = None
    result: Any = None
    try:
        result = await coro
    except asyncio.CancelledError:
        outcome = "cancelled"
    except BaseException as error:
        outcome, exc = "failed", error
    else:
        outcome = "completed"
    if handle is not None:
        handle.cancel()
        if task in rt.expired:
            rt.expired.discard(task)
            outcome = "timed_out"
            exc = TimeoutError(f"exceeded task_timeout of {rt.options.task_timeout}s")
    del rt.tasks[coro]
    if timing is not None:
        timing.duration.add(_monotonic() - began)
    if outcome == "completed":  # most jobs: the same as _count, without getattr/setattr
        with rt.lock:
            rt.version += 1
            rt.running -= 1
            rt.completed += 1
            rt.version += 1
    else:
        _count(rt, outcome)
    pub = rt.publisher
    if pub is not None and not pub.queued:
        publish_soon(rt)
    if outcome == "cancelled" and rt.closed:
        rt.cancelled_names.append(coroutine_name(coro))
    if future is not None:
        if outcome == "completed":
            future.set_result(result)
        elif outcome == "cancelled":
            future._set_cancelled()
        else:
            assert exc is not None
            future.set_exception(exc)
    elif exc is not None:
        _report_failure(rt, exc, coroutine_name(coro), outcome)
    if rt.inbox:
        start_waiting(rt)
    elif rt.room_waiters:
        rt.notify_room()
    if rt.idle_waiters and rt.running == 0 and not rt.inbox:
        waiters, rt.idle_waiters = rt.idle_waiters, []
        for waiter in waiters:
            waiter()


def expire(rt: Runtime, task: asyncio.Task[Any]) -> None:
    """``task_timeout`` passed: cancel the task and remember why."""
    # A task that finished in this same loop iteration is not timed out: its done
    # callbacks are merely still queued.
    if not task.done() and task.cancel():
        rt.expired.add(task)


def _count(rt: Runtime, outcome: str) -> None:
    with rt.lock:
        rt.version += 1
        rt.running -= 1
        setattr(rt, outcome, getattr(rt, outcome) + 1)
        rt.version += 1


def _report_failure(rt: Runtime, exc: BaseException, name: str, outcome: str) -> None:
    if outcome == "timed_out":
        logger.error("asyncbridge task %s timed out: %s", name, exc)
    else:
        logger.error("asyncbridge task %s failed", name, exc_info=exc)
    hook = rt.options.on_error
    if hook is not None:
        call_hook(hook, "on_error", exc, name)


def when_idle(rt: Runtime, callback: Callable[[], object]) -> None:
    """Call ``callback`` on the loop once nothing is pending or running."""
    start_waiting(rt)
    if rt.running == 0 and not rt.inbox:
        callback()
    else:
        rt.idle_waiters.append(callback)


def cancel_unstarted(rt: Runtime) -> None:
    """Take every item left in the inbox and cancel it (counted, named, closed)."""
    inbox = rt.inbox
    items: list[Item] = []
    with rt.lock:
        rt.version += 1
        while inbox:
            items.append(inbox.popleft())
        rt.taken += len(items)
        rt.cancelled += len(items)
        rt.version += 1
    rt.cancelled_names.extend(coroutine_name(coro) for coro, _, _ in items)
    for coro, _, future in items:
        close_quietly(coro)
        if future is not None:
            future.cancel()


def sweep(rt: Runtime) -> None:
    """Cancel what is left in the inbox once the loop is gone (shutdown, or a racing caller)."""
    if rt.finished or (rt.loop is not None and rt.loop.is_closed()):
        cancel_unstarted(rt)
