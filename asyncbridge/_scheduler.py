"""The loop side: the loop thread, pulling the inbox, starting tasks, and counting outcomes.

Every function that takes a ``lane`` works on any lane's state; the default lane's is the
runtime itself (``lane.runtime is lane``).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import sys
import threading
import time
import weakref
from collections.abc import Callable, Coroutine
from typing import Any

from ._future import BridgeFuture
from ._inputs import coroutine_name
from ._log import call_hook, close_quietly, logger
from ._publish import publish_soon
from ._runtime import DEFAULT_LANE, BatchQueueLike, Item, LaneState, Runtime

__all__ = [
    "LOOP_THREAD",
    "apply_options",
    "attach_queue",
    "cancel_unstarted",
    "count_retry",
    "current_lane",
    "current_runtime",
    "give_back_slot",
    "is_idle",
    "lane_state",
    "options_changed",
    "pull",
    "refill",
    "rest",
    "retake_slot",
    "run_loop",
    "start_batch",
    "start_waiting",
    "sweep",
    "take_batch",
    "take_slot_back",
    "when_idle",
]

# In each bridge loop thread, `owner` is a weak reference to the bridge that runs it, so that
# Bridge.current() (called by the aiohttp helper for every request) is a lookup, not a scan.
LOOP_THREAD = threading.local()

_NO_LIMIT = 1 << 62
# The most coroutines one pass of start_waiting starts; the rest wait for the next pass.
_CHUNK = 128
_Task = asyncio.Task
_BASE_CREATE_TASK = asyncio.BaseEventLoop.create_task
# Eager task start (Python 3.12+): a task's first step runs when it is made.
_EAGER = sys.version_info >= (3, 12)
_EAGER_START: dict[str, Any] = {"eager_start": True} if _EAGER else {}
_current_task = asyncio.current_task
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
    LOOP_THREAD.runtime = rt
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
            _wake_idle_waiters(rt)  # drain() and shutdown() callers: nothing more will run


def pull(lane: LaneState) -> None:
    """The coalesced wake-up callers queue: start what waits in the inbox."""
    rt = lane.runtime
    first_handoff = lane.scheduled_at
    lane.scheduled = lane.starved = False
    lane.backoffs = 0
    if rt.timing is not None:
        rt.timing.of(lane).pulled(lane.taken + len(lane.inbox), first_handoff)
    start_waiting(lane)


def start_waiting(lane: LaneState) -> None:
    """Start waiting work, oldest first, up to ``max_concurrency`` holding a slot at once.

    Free slots go first to retries back from their sleep, then to the inbox, then to batchers'
    due flushes. One pass starts at most ``_CHUNK`` coroutines and queues the next pass behind
    them (see :func:`refill`): a burst of 50,000 started at once keeps 50,000 tasks alive
    together, and the collector's passes over them, with the cache misses, cost the loop about
    twice what starting them a chunk at a time does.
    """
    rt = lane.runtime
    if lane.returning:
        _hand_back_slots(lane)
    inbox = lane.inbox
    if not inbox:
        if lane.queues:
            _start_flushes(lane)
        return
    if rt.cleaning:
        cancel_unstarted(rt)
        return
    options = lane.options
    batch: collections.deque[Item] = collections.deque()
    with rt.lock:
        rt.version += 1
        room = (options.max_concurrency or _NO_LIMIT) - lane.busy
        if room > _CHUNK:
            room = _CHUNK
        while inbox and room > 0:
            batch.append(inbox.popleft())
            room -= 1
        lane.taken += len(batch)
        lane.running += len(batch)
        rt.version += 1
    lane.busy += len(batch)
    if rt.timing is not None:
        rt.timing.of(lane).took(
            lane.taken - len(batch), len(batch), _monotonic(), lane.scheduled_at
        )
    publish_soon(rt)
    loop = rt.loop
    assert loop is not None
    # What this pass has taken and not yet started stays visible (shutdown names it, should a
    # first step block the loop before the pass ends).
    lane.starting = batch
    lane.passing = True
    try:
        _start_each(lane, batch, loop)
    finally:
        lane.passing = False
    if lane.queues:
        _start_flushes(lane)
    if inbox and lane.busy < (options.max_concurrency or _NO_LIMIT):
        refill(lane)  # the chunk's limit, or slots that jobs started eagerly gave back
    if lane.room_waiters:
        lane.notify_room()


def _start_each(
    lane: LaneState, batch: collections.deque[Item], loop: asyncio.AbstractEventLoop
) -> None:
    """Make a task for each item of ``batch`` (taken from the inbox), oldest first."""
    rt = lane.runtime
    # Tasks are made directly, without loop.create_task's Python frame around the same call
    # (a task factory set on the loop, or a loop class with its own create_task, is honoured
    # instead). On Python 3.12+ each starts eagerly: its first step runs here, and a job that
    # ends before its first real wait never touches the loop's queue.
    direct = loop.get_task_factory() is None and type(loop).create_task is _BASE_CREATE_TASK
    # A job started eagerly registered itself in its first step (see _register_self).
    registered = direct and _EAGER
    tasks = rt.tasks
    lane_of = None if lane is rt else rt.lane_of
    timeout = lane.options.task_timeout
    while batch:
        coro, context, future = batch.popleft()
        if future is not None and not future.set_running_or_notify_cancel():
            close_quietly(coro)
            _count(lane, "cancelled")
            continue
        # The job learns its own task from the slot, filled before it next runs: cheaper than
        # asking asyncio.current_task(), a Python function on 3.11. A job started eagerly
        # finds the slot empty in its first step and asks (a C function there).
        slot: list[asyncio.Task[Any]] = []
        job = _job(lane, coro, future, timeout, slot)
        try:
            if direct:
                task = _Task(job, loop=loop, context=context, **_EAGER_START)
            else:
                task = loop.create_task(job, context=context)
        except BaseException as error:  # a task factory (or loop) that fails: this job fails
            _not_started(lane, job, coro, future, error)
            continue
        if task.done():  # started eagerly, it ended in its first step and counted itself
            continue
        slot.append(task)
        if not registered:
            tasks[task] = coro
            if lane_of is not None:
                lane_of[task] = lane
        if future is not None:
            future._task = task
            if future._cancel_requested:  # cancel() ran before the task existed
                # After the task's first step, never before it: a task cancelled before it
                # first runs never enters _job, which would then count nothing.
                loop.call_soon(task.cancel)


def _fill(lane: LaneState) -> None:
    """A slot came free (a job or flush ended, a retry sleeps): start what waits for it.

    At once, in this loop iteration, as a job's end always did (work handed off while the loop
    ran waits no extra iteration); but through a queued pass when a pass is running (a job
    started eagerly ends inside it, and must not start others inside its own first step) or is
    queued already (a burst: its chunks go one pass at a time).
    """
    if lane.passing or lane.resuming:
        refill(lane)
    else:
        start_waiting(lane)


def refill(lane: LaneState) -> None:
    """Queue one more pass of :func:`start_waiting` on the loop, unless one is queued already."""
    if not lane.resuming:
        lane.resuming = True
        lane.runtime.loop.call_soon(_resume, lane)  # type: ignore[union-attr]


def _resume(lane: LaneState) -> None:
    lane.resuming = False
    start_waiting(lane)


def _not_started(
    lane: LaneState,
    job: Coroutine[Any, Any, Any],
    coro: Coroutine[Any, Any, Any],
    future: BridgeFuture[Any] | None,
    error: BaseException,
) -> None:
    """Making a job's task failed: the job fails with that error, counted and reported."""
    job.close()
    close_quietly(coro)
    _count(lane, "failed")
    if future is not None:
        future.set_exception(error)
    else:
        _report_failure(lane, error, coroutine_name(coro), "failed")


async def _job(
    lane: LaneState,
    coro: Coroutine[Any, Any, Any],
    future: BridgeFuture[Any] | None,
    limit: float | None,
    slot: list[asyncio.Task[Any]],
) -> None:
    """One accepted coroutine, run in its own task, counting its own outcome when it ends.

    Counting here, at the end of the task's last step, instead of in a done callback saves the
    callback's scheduling and a ``partial`` per job. Whatever the coroutine raises stays here:
    SystemExit and KeyboardInterrupt too, which asyncio would otherwise let out of the loop.
    """
    rt = lane.runtime
    task = slot[0] if slot else _register_self(lane, coro)
    handle = None
    timing = None if rt.timing is None else rt.timing.of(lane)
    began = 0.0 if timing is None else _monotonic()
    if limit is not None:
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
        outcome, exc = _settle_timeout(lane, task, handle, outcome, exc)
    del rt.tasks[task]
    if lane is not rt:
        del rt.lane_of[task]
    if timing is not None:
        timing.duration.add(_monotonic() - began)
    if outcome == "completed":  # most jobs: the same as _count, without getattr/setattr
        with rt.lock:
            rt.version += 1
            lane.running -= 1
            lane.completed += 1
            rt.version += 1
        lane.busy -= 1
    else:
        _count(lane, outcome)
    pub = rt.publisher
    if pub is not None and not pub.queued:
        publish_soon(rt)
    if outcome == "cancelled" and rt.closed:
        rt.cancelled_names.append(coroutine_name(coro))
    if future is not None:
        _settle_future(future, outcome, result, exc)
    elif exc is not None:
        _report_failure(lane, exc, coroutine_name(coro), outcome)
    _slot_freed(lane)


def _settle_future(
    future: BridgeFuture[Any], outcome: str, result: Any, exc: BaseException | None
) -> None:
    """Give a submit() future its outcome; what its done callbacks raise stays here.

    concurrent.futures lets a callback's BaseException (SystemExit) out of set_result; on the
    loop it would end the task, or, for a job started eagerly, the pass that starts the rest.
    """
    try:
        if outcome == "completed":
            future.set_result(result)
        elif outcome == "cancelled":
            future._set_cancelled()
        else:
            assert exc is not None
            future.set_exception(exc)
    except BaseException:
        logger.exception("asyncbridge: a done callback of a submit() future raised")


def _register_self(lane: LaneState, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
    """A job or flush in its first step with its slot still empty: it was started eagerly, and
    registers its own task, so that shutdown, ``current_lane()`` and its own end find it."""
    task = _current_task()
    assert task is not None
    rt = lane.runtime
    rt.tasks[task] = coro
    if lane is not rt:
        rt.lane_of[task] = lane
    return task


def _settle_timeout(
    lane: LaneState,
    task: asyncio.Task[Any],
    handle: asyncio.TimerHandle,
    outcome: str,
    exc: BaseException | None,
) -> tuple[str, BaseException | None]:
    """A job under ``task_timeout`` ended: stop its timer; a cancellation by it is a timeout."""
    handle.cancel()
    expired = lane.runtime.expired
    if task in expired:
        expired.discard(task)
        return "timed_out", TimeoutError(f"exceeded task_timeout of {lane.options.task_timeout}s")
    return outcome, exc


def _slot_freed(lane: LaneState) -> None:
    """A job or a flush ended and gave its slot back: refill it, wake who waits for room/idle."""
    if lane.inbox or lane.returning or lane.queues:
        _fill(lane)
    elif lane.room_waiters:
        lane.notify_room()
    rt = lane.runtime
    if rt.idle_waiters and is_idle(rt):
        _wake_idle_waiters(rt)


def expire(rt: Runtime, task: asyncio.Task[Any]) -> None:
    """``task_timeout`` passed: cancel the task and remember why."""
    # A task that finished in this same loop iteration is not timed out: its done
    # callbacks are merely still queued.
    if not task.done() and task.cancel():
        rt.expired.add(task)


def _count(lane: LaneState, outcome: str, units: int = 1) -> None:
    """One job (or a flush of ``units`` items) ended with ``outcome``; its slot is free."""
    rt = lane.runtime
    with rt.lock:
        rt.version += 1
        lane.running -= units
        setattr(lane, outcome, getattr(lane, outcome) + units)
        rt.version += 1
    lane.busy -= 1


def _report_failure(lane: LaneState, exc: BaseException, name: str, outcome: str) -> None:
    # The first of each kind in full, then summaries (see _failures): an outage of a thousand
    # failures a second must not write a thousand tracebacks a second.
    lane.runtime.summaries.failure(name, exc, lane=lane.name, timed_out=outcome == "timed_out")
    hook = lane.options.on_error
    if hook is not None:
        call_hook(hook, "on_error", exc, name, loop_side=True)


def when_idle(rt: Runtime, callback: Callable[[], object]) -> None:
    """Call ``callback`` on the loop once nothing is pending or running, in any lane.

    Batchers' waiting items are due at once (whoever waits for idle wants them sent). Once
    admission is closed (shutdown's drain), retries asleep are woken to decide whether another
    try still fits before the drain deadline.
    """
    lanes = list(rt.lanes.values())
    for lane in lanes:
        for queue in lane.queues:
            queue.hurry()
    if rt.closed:
        for sleep in list(rt.resting):
            if not sleep.done():
                sleep.set_result(None)
    for lane in lanes:
        start_waiting(lane)
    if is_idle(rt):
        callback()
    else:
        rt.idle_waiters.append(callback)


def forget_idle_waiter(rt: Runtime, callback: Callable[[], object]) -> None:
    """Take back ``callback`` from the idle waiters (a drain() that gave up), if still there."""
    with contextlib.suppress(ValueError):
        rt.idle_waiters.remove(callback)


def is_idle(rt: Runtime) -> bool:
    """Nothing pending or running in any lane of ``rt``."""
    for lane in list(rt.lanes.values()):
        if lane.running or lane.inbox or (lane.queues and lane.backlog()):
            return False
    return True


def _wake_idle_waiters(rt: Runtime) -> None:
    waiters, rt.idle_waiters = rt.idle_waiters, []
    for waiter in waiters:
        waiter()


def cancel_unstarted(rt: Runtime) -> None:
    """Take every item left in every lane (inboxes, batchers) and cancel it: counted, named."""
    for lane in list(rt.lanes.values()):
        inbox = lane.inbox
        items: list[Item] = []
        names: list[str] = []
        with rt.lock:
            rt.version += 1
            while inbox:
                items.append(inbox.popleft())
            taken = len(items)
            for queue in lane.queues:
                waiting = len(queue.take_all())
                taken += waiting
                names.extend([queue.name] * waiting)
            lane.taken += taken
            lane.cancelled += taken
            rt.version += 1
        rt.cancelled_names.extend(coroutine_name(coro) for coro, _, _ in items)
        rt.cancelled_names.extend(names)
        for coro, _, future in items:
            close_quietly(coro)
            if future is not None:
                future.cancel()


def sweep(rt: Runtime) -> None:
    """Cancel what is left in the inbox once the loop is gone (shutdown, or a racing caller)."""
    if rt.finished or (rt.loop is not None and rt.loop.is_closed()):
        cancel_unstarted(rt)


# -- lanes ----------------------------------------------------------------------------------------


def lane_state(rt: Runtime, name: str, explicit: dict[str, Any]) -> LaneState:
    """The lane ``name`` of ``rt``, made with the bridge's options and ``explicit`` over them.

    A lane that exists already is returned as it is (the first maker's options win).
    """
    if name == DEFAULT_LANE:
        return rt
    with rt.lock:
        lane = rt.lanes.get(name)
        if lane is None:
            lane = LaneState(rt, name, dict(explicit), rt.options.updated(explicit))
            rt.version += 1
            rt.lanes = {**rt.lanes, name: lane}  # replaced whole: readers iterate without a lock
            rt.version += 1
        return lane


def options_changed(lanes: list[LaneState]) -> None:
    """New options act at once (from any thread): callers waiting for room look again, and the
    loop starts what a higher ``max_concurrency`` now lets run, in each of ``lanes``."""
    for lane in lanes:
        lane.notify_room()
    loop = lanes[0].runtime.loop if lanes else None
    if loop is None:
        return
    try:
        loop.call_soon_threadsafe(_start_all, lanes)  # one wake-up for them all
    except RuntimeError:  # the loop closed under us
        pass


def _start_all(lanes: list[LaneState]) -> None:
    for lane in lanes:
        start_waiting(lane)


def apply_options(lane: LaneState, bridge_options: Any) -> None:
    """The bridge's options changed (or the lane's own): recompute what the lane has in force."""
    if lane is lane.runtime:
        return  # the default lane's options are the bridge's own
    lane.options = bridge_options.updated(lane.explicit)


def attach_queue(lane: LaneState, queue: BatchQueueLike) -> None:
    """A batcher's queue starts in this lane (its items count in the lane's backlog)."""
    rt = lane.runtime
    with rt.lock:
        rt.version += 1
        lane.queues = [*lane.queues, queue]
        rt.version += 1


# -- retries: a sleep without a slot --------------------------------------------------------------


def current_lane() -> LaneState | None:
    """The lane of the job running in the current task, or None outside a bridge's own job.

    Only the task a lane started counts: a task that a job spawns holds no slot of its own.
    """
    rt: Runtime | None = getattr(LOOP_THREAD, "runtime", None)
    if rt is None:
        return None
    task = _current_task()
    if task is None or task not in rt.tasks:
        return None
    return rt.lane_of.get(task, rt)


def current_runtime() -> Runtime | None:
    """The runtime whose loop runs in the calling thread, or None elsewhere."""
    rt: Runtime | None = getattr(LOOP_THREAD, "runtime", None)
    if rt is None or asyncio._get_running_loop() is not rt.loop:
        return None
    return rt


def count_retry(lane: LaneState) -> None:
    """A job tries again (``Stats.retries``)."""
    rt = lane.runtime
    with rt.lock:
        rt.version += 1
        lane.retries += 1
        rt.version += 1


def give_back_slot(lane: LaneState) -> None:
    """The running job sleeps: its slot goes to what waits for one."""
    lane.busy -= 1
    if lane.inbox or lane.returning or lane.queues:
        _fill(lane)


def retake_slot(lane: LaneState) -> None:
    """The job ends without waiting for a slot again (it gave up, or was cancelled asleep).

    It takes its slot back at once, perhaps one over the limit for this moment, so that its end
    gives back exactly what it holds.
    """
    lane.busy += 1


async def take_slot_back(lane: LaneState) -> None:
    """Wait for a free slot of ``lane`` after a sleep; returning jobs go before new work."""
    limit = lane.options.max_concurrency
    if limit is None or (lane.busy < limit and not lane.returning):
        lane.busy += 1
        return
    loop = lane.runtime.loop
    assert loop is not None
    turn: asyncio.Future[None] = loop.create_future()
    lane.returning.append(turn)
    try:
        await turn
    except BaseException:
        if not (turn.done() and not turn.cancelled()):  # not handed a slot: take one to give
            lane.busy += 1
        raise


def _hand_back_slots(lane: LaneState) -> None:
    limit = lane.options.max_concurrency or _NO_LIMIT
    returning = lane.returning
    while returning and lane.busy < limit:
        turn = returning.popleft()
        if not turn.done():
            lane.busy += 1
            turn.set_result(None)


async def rest(rt: Runtime, seconds: float) -> None:
    """Sleep up to ``seconds``; a drain that begins meanwhile ends the sleep early."""
    loop = rt.loop
    assert loop is not None
    sleep: asyncio.Future[None] = loop.create_future()
    rt.resting.add(sleep)
    handle = loop.call_later(seconds, _end_rest, sleep)
    try:
        await sleep
    finally:
        handle.cancel()
        rt.resting.discard(sleep)


def _end_rest(sleep: asyncio.Future[None]) -> None:
    if not sleep.done():
        sleep.set_result(None)


# -- batches: a flush of many items in one slot ------------------------------------------------


def _start_flushes(lane: LaneState) -> None:
    if lane.runtime.cleaning:
        return
    room = (lane.options.max_concurrency or _NO_LIMIT) - lane.busy
    for queue in lane.queues:
        if room <= 0:
            break
        room -= queue.start(room)


def take_batch(lane: LaneState, items: Any, size: int) -> list[Any]:
    """Take up to ``size`` of a queue's ``items`` for a flush: counted as taken and running."""
    rt = lane.runtime
    with rt.lock:
        rt.version += 1
        batch = [items.popleft() for _ in range(min(size, len(items)))]
        lane.taken += len(batch)
        lane.running += len(batch)
        rt.version += 1
    if batch:
        lane.busy += 1
    if lane.room_waiters:
        lane.notify_room()
    return batch


def start_batch(
    lane: LaneState,
    coro: Coroutine[Any, Any, Any],
    units: int,
    name: str,
    ended: Callable[[], object] | None = None,
) -> None:
    """Run a flush of ``units`` items (taken by :func:`take_batch`) as one of the lane's jobs.

    ``ended`` is called once when it ends, however it ends, before its slot is given back.
    """
    rt = lane.runtime
    loop = rt.loop
    assert loop is not None
    slot: list[asyncio.Task[Any]] = []
    ran: list[bool] = []
    job = _batch_job(lane, coro, units, name, lane.options.task_timeout, slot, ran, ended)
    # As in a pass (start_waiting): a flush that an eager task factory runs to its end in here
    # queues the next pass when its slot comes free, instead of starting the next flush inside
    # its own first step (a drain waiting made that one level deeper per batch).
    passing, lane.passing = lane.passing, True
    try:
        task = loop.create_task(job)
    finally:
        lane.passing = passing
    if task.done():  # an eager task factory ran it to its end already
        return
    slot.append(task)
    rt.tasks[task] = coro
    if lane is not rt:
        rt.lane_of[task] = lane
    task.add_done_callback(functools.partial(_unstarted_flush, lane, coro, units, name, ran, ended))


def _unstarted_flush(
    lane: LaneState,
    coro: Coroutine[Any, Any, Any],
    units: int,
    name: str,
    ran: list[bool],
    ended: Callable[[], object] | None,
    task: asyncio.Task[Any],
) -> None:
    """A flush's task ended: if it was cancelled before its first step, count its items.

    Its job never ran (a task cancelled before it first runs never enters its coroutine), so
    nothing else counts them, frees the slot or closes the flush's coroutine.
    """
    if ran:
        return  # the job counted itself
    rt = lane.runtime
    close_quietly(coro)
    rt.tasks.pop(task, None)
    if lane is not rt:
        rt.lane_of.pop(task, None)
    if ended is not None:
        ended()
    _count(lane, "cancelled", units)
    if rt.closed:
        rt.cancelled_names.extend([name] * units)
    _slot_freed(lane)


async def _batch_job(
    lane: LaneState,
    coro: Coroutine[Any, Any, Any],
    units: int,
    name: str,
    limit: float | None,
    slot: list[asyncio.Task[Any]],
    ran: list[bool],
    ended: Callable[[], object] | None,
) -> None:
    """A flush, counting its outcome for each of its ``units`` items; see :func:`_job`."""
    ran.append(True)
    rt = lane.runtime
    task = slot[0] if slot else _register_self(lane, coro)
    handle = None
    if limit is not None:
        handle = rt.loop.call_later(limit, expire, rt, task)  # type: ignore[union-attr]
    exc: BaseException | None = None
    try:
        await coro
    except asyncio.CancelledError:
        outcome = "cancelled"
    except BaseException as error:
        outcome, exc = "failed", error
    else:
        outcome = "completed"
    if handle is not None:
        outcome, exc = _settle_timeout(lane, task, handle, outcome, exc)
    del rt.tasks[task]
    if lane is not rt:
        del rt.lane_of[task]
    if ended is not None:
        ended()
    _count(lane, outcome, units)
    if outcome == "cancelled" and rt.closed:
        rt.cancelled_names.extend([name] * units)
    if exc is not None:
        _report_failure(lane, exc, name, outcome)
    _slot_freed(lane)
