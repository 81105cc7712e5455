"""The :class:`Bridge`: one background asyncio loop per process, and the hand-off to it."""

from __future__ import annotations

import asyncio
import atexit
import collections
import concurrent.futures
import contextvars
import functools
import logging
import mmap
import os
import sys
import threading
import time
import weakref
from collections.abc import Callable, Coroutine
from types import CoroutineType
from typing import Any, TypeVar

from ._config import Options, options_from_env
from ._errors import AsyncBridgeError, BacklogFull, BridgeClosed
from ._inputs import coroutine_name, not_a_coroutine
from ._stats import ShutdownReport, Stats

__all__ = ["Bridge"]

T = TypeVar("T")

logger = logging.getLogger("asyncbridge")

# How long shutdown may run past its drain deadline: cancelled tasks get half of it to unwind,
# async generators, close callbacks and the default executor share the rest, then the join.
SHUTDOWN_MARGIN = 1.0
_DROP_WARNING_INTERVAL = 10.0

_getpid = os.getpid
_copy_context = contextvars.copy_context
_monotonic = time.monotonic

# Back-off for a starved loop. Later callers only append while a wake-up is pending, so none of
# them releases the GIL; with CPU-bound request threads the loop thread then gets it only on the
# interpreter's 5 ms forced switches, shared with every other thread (a publish delay of hundreds
# of ms at p99 with 8 such threads). A caller that finds a backlog and the wake-up overdue sleeps
# briefly, which hands the GIL over. The backlog test comes first, so a loop that keeps up costs
# callers one comparison. Past it, only every 8th append reads the clock; what it finds is kept in
# `starved` until the next look, the loop's next pull or a new wake-up, so that every caller
# backs off meanwhile, not only the one that looked (reading the clock on every call made a
# burst's median hand-off 10-25% dearer). A wake-up pending for longer than _GIVE_UP means a loop
# blocked by its own work (sleeping would not help it), so callers stop paying then.
# bench/publish_delay.py measures it.
_BACKLOG_BEFORE_BACKOFF = 8
_LOOK_EVERY = 7  # a mask: read the clock when the backlog is a multiple of 8
_STARVED = 0.002
_GIVE_UP = 0.1
_BACKOFF = 0.0005


def _is_starved(rt: _Runtime) -> bool:
    """Read the clock: is the pending wake-up overdue, but not so late that the loop is blocked?"""
    rt.starved = starved = _STARVED < _monotonic() - rt.scheduled_at < _GIVE_UP
    return starved


def _back_off(rt: _Runtime) -> None:
    if not rt.in_loop_thread():  # never on the loop itself: it is the one we wait for
        time.sleep(_BACKOFF)


# Runtimes inherited through fork. Their loop, thread and queued coroutines belong to the parent;
# dropping the last reference would let the garbage collector close coroutines here, running
# their ``finally`` blocks (and maybe writing to sockets the parent still uses) in the child.
_ORPHANS: list[_Runtime] = []

# concurrent.futures' private state names, stable since Python 3.2; _BridgeFuture needs them to
# mark a running future cancelled.
_FINISHED = getattr(concurrent.futures._base, "FINISHED", "FINISHED")
_CANCELLED = getattr(concurrent.futures._base, "CANCELLED", "CANCELLED")
_CANCELLED_AND_NOTIFIED = getattr(
    concurrent.futures._base, "CANCELLED_AND_NOTIFIED", "CANCELLED_AND_NOTIFIED"
)
_BRIDGES: weakref.WeakSet[Bridge] = weakref.WeakSet()
# In each bridge loop thread, `bridge` is a weak reference to the bridge that runs it, so that
# Bridge.current() (called by the aiohttp helper for every request) is a lookup, not a scan.
_LOOP_THREAD = threading.local()

_MADV_WIPEONFORK = getattr(mmap, "MADV_WIPEONFORK", 18 if sys.platform == "linux" else None)


def _fork_marker() -> mmap.mmap | bytearray:
    """A byte that reads 1 in the process that made it and 0 in every process forked from it.

    Reading it costs about 30 ns, where ``os.getpid()`` is a system call of 200-300 ns on the
    machines we measured: on the hot path it is most of the hand-off's cost. The kernel zeroes a
    MADV_WIPEONFORK page in the child of any fork (os.fork, multiprocessing, uWSGI, gunicorn), with
    or without ``os.register_at_fork`` callbacks. Where the kernel lacks it (non-Linux, Linux
    before 4.14), the byte is always 0 and every call compares PIDs instead.
    """
    if _MADV_WIPEONFORK is not None:
        try:
            page = mmap.mmap(-1, mmap.PAGESIZE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
            page.madvise(_MADV_WIPEONFORK)
        except (OSError, ValueError, AttributeError):
            pass
        else:
            page[0] = 1
            return page
    return bytearray(1)


_Item = tuple[Coroutine[Any, Any, Any], contextvars.Context, "_BridgeFuture[Any] | None"]


class _Runtime:
    """Everything that belongs to one process's loop. After fork the child replaces it whole."""

    __slots__ = (
        "cancelled",
        "cancelled_names",
        "cleaning",
        "close_callbacks",
        "closed",
        "completed",
        "dropped_closed",
        "dropped_full",
        "expired",
        "failed",
        "finished",
        "here",
        "idle_waiters",
        "inbox",
        "lock",
        "loop",
        "pid",
        "report",
        "room",
        "room_waiters",
        "running",
        "scheduled",
        "scheduled_at",
        "starved",
        "taken",
        "tasks",
        "thread",
        "timed_out",
        "warned_at",
    )

    def __init__(self, pid: int) -> None:
        self.pid = pid
        # Nonzero only in the process that owns this runtime (see _fork_marker). The runtime is
        # published to callers only once its loop runs, so a nonzero byte means "use me".
        self.here: mmap.mmap | bytearray = bytearray(1)
        self.loop: asyncio.AbstractEventLoop | None = None
        self.thread: threading.Thread | None = None
        # Accepted work that has not started, oldest first. Callers append, the loop pops.
        self.inbox: collections.deque[_Item] = collections.deque()
        # True while a wake-up (_pull) is queued on the loop: later callers need not queue another.
        self.scheduled = False
        self.scheduled_at = 0.0  # when `scheduled` was set (time.monotonic)
        # A caller's last look found the wake-up overdue; the next look, pull or wake-up resets it.
        self.starved = False
        self.closed = False  # admission closed by shutdown
        self.cleaning = False  # past the drain: nothing more may start on the loop
        self.finished = False  # the loop is gone; whoever appends now must sweep the inbox
        # Guards the counters, so that stats() is a consistent snapshot. Never held while user
        # code runs. Reentrant: a signal handler (worker_int) may ask for stats() while the
        # main thread it interrupted holds it.
        self.lock = threading.RLock()
        self.taken = 0  # items removed from the inbox: started, or swept and cancelled
        self.running = 0
        self.completed = 0
        self.failed = 0
        self.timed_out = 0
        self.cancelled = 0
        self.dropped_full = 0
        self.dropped_closed = 0
        self.tasks: set[asyncio.Task[Any]] = set()
        self.expired: set[asyncio.Task[Any]] = set()
        self.cancelled_names: list[str] = []
        self.idle_waiters: list[Callable[[], object]] = []
        self.close_callbacks: list[Callable[[], Coroutine[Any, Any, object]]] = []
        self.room = threading.Condition(threading.Lock())
        self.room_waiters = 0
        self.warned_at: dict[str, float] = {}
        self.report: ShutdownReport | None = None

    def in_loop_thread(self) -> bool:
        # Compare Thread objects, not idents: a finished loop thread's ident is reused by the
        # next thread the OS starts, which may be another bridge's loop thread.
        return self.thread is not None and self.thread is threading.current_thread()

    def snapshot(self) -> Stats:
        with self.lock:
            pending = len(self.inbox)
            return Stats(
                accepted=self.taken + pending,
                completed=self.completed,
                failed=self.failed,
                timed_out=self.timed_out,
                cancelled=self.cancelled,
                pending=pending,
                running=self.running,
                dropped={"full": self.dropped_full, "closed": self.dropped_closed},
                pid=self.pid,
                loop_running=self.thread is not None and self.thread.is_alive(),
            )


_NOT_STARTED = _Runtime(-1)


class Bridge:
    """A background asyncio loop per process, fed from synchronous code.

    The module-level functions of :mod:`asyncbridge` call one default instance. Tests and
    advanced users may hold their own. Every method may be called from any thread; a bridge
    inherited through ``fork`` is discarded in the child, which starts its own loop on first use.

    Args:
        **options: Any option of :meth:`configure`. Options not given come from the
            ``ASYNCBRIDGE_<NAME>`` environment variables, then from the defaults. The
            environment is read again when a process starts its loop, so variables set after
            import (gunicorn's ``raw_env``) still apply; options set in code always win.
    """

    def __init__(self, **options: Any) -> None:
        self._options = Options().updated(options_from_env()).updated(options)
        # Options set in code, kept so that the environment can be read again when a process
        # starts its loop (gunicorn's raw_env reaches os.environ only after our import).
        self._explicit: dict[str, Any] = dict(options)
        self._apply()
        self._rt = _NOT_STARTED
        # One lifecycle lock per process, made on first use there: a lock inherited through fork
        # may be held by a parent thread that does not exist in the child.
        self._lifecycle_locks: dict[int, threading.Lock] = {}
        _BRIDGES.add(self)

    # -- configuration -------------------------------------------------------------------------

    def _apply(self) -> None:
        o = self._options
        self._max_pending = o.max_pending
        self._limit = o.max_concurrency or (1 << 62)

    @property
    def options(self) -> Options:
        """The options in force."""
        return self._options

    def configure(self, **options: Any) -> None:
        """Change options. Each takes effect at once, ``loop_factory`` at the next loop start.

        Args:
            max_pending: Bound on accepted but unfinished coroutines (default 10000). The
                check takes no lock, so threads handing off at the same instant may each
                overshoot it by one.
            max_concurrency: How many run at once; the rest wait in order (default 100;
                None for no limit).
            on_full: ``"drop"`` (default), ``"raise"`` or ``"block"``, when the backlog is full.
            block_timeout: With ``on_full="block"``, seconds to wait for room before dropping.
            drain_timeout: Default shutdown deadline in seconds (default 10).
            task_timeout: Seconds a coroutine may run before it is cancelled and counted as timed
                out (default None: no limit).
            loop_factory: Makes the loop, e.g. ``uvloop.new_event_loop``.
            on_error: ``on_error(exc, name)``, called on the loop for each failed or timed-out
                ``run_soon`` coroutine.
            on_drop: ``on_drop(name, reason)``, called in the dropping thread for each refused
                coroutine; reason is ``"full"`` or ``"closed"``.

        Raises:
            TypeError: An unknown option, or a value of the wrong type.
            ValueError: A value out of range.
        """
        self._options = self._options.updated(options)
        self._explicit.update(options)
        self._apply()

    # -- the hand-off (hot path) ---------------------------------------------------------------

    def run_soon(self, coro: Coroutine[Any, Any, Any], /) -> bool:
        """Schedule ``coro`` on this process's loop and return at once.

        The coroutine runs in a copy of the caller's context variables. Its exception is logged
        on the ``asyncbridge`` logger, counted, and passed to ``on_error``; it never reaches the
        caller. The loop starts on first use in each process.

        Returns:
            True when accepted; False when dropped (backlog full under ``on_full="drop"`` or
            ``"block"``, or the bridge shut down). A dropped coroutine is closed and counted.

        Raises:
            TypeError: ``coro`` is not a coroutine object.
            BacklogFull: The backlog is full and ``on_full="raise"``.
        """
        if type(coro) is not CoroutineType and not asyncio.iscoroutine(coro):
            raise not_a_coroutine("run_soon", coro)
        rt = self._rt
        if not rt.here[0]:  # not started in this process, or inherited through fork
            rt = self._start_for(coro)
        if rt.closed:
            self._drop(rt, coro, "closed")
            return False
        backlog = len(rt.inbox)
        if backlog + rt.running >= self._max_pending and not self._make_room(rt, coro):
            return False
        rt.inbox.append((coro, _copy_context(), None))
        # Coalesced wake-up: only the first hand-off after the loop drained its inbox pays for
        # call_soon_threadsafe. This relies on the GIL ordering the append before the read of
        # `scheduled`, and the loop's `scheduled = False` before its read of the inbox. On a
        # free-threaded build both pairs need a real fence: the flag would become an atomic
        # exchange (or the check-and-set would take a lock) so that no append is left unseen.
        # (submit() repeats these lines through _wake; inline here, a call costs the hot path.)
        if not rt.scheduled:
            rt.scheduled = True
            rt.scheduled_at = _monotonic()
            rt.starved = False  # a finding about an earlier wake-up is stale
            try:
                rt.loop.call_soon_threadsafe(self._pull, rt)  # type: ignore[union-attr]
            except RuntimeError:  # the loop closed under us: shutdown raced this call
                self._sweep(rt)
                return True
        elif backlog >= _BACKLOG_BEFORE_BACKOFF and (
            rt.starved if backlog & _LOOK_EVERY else _is_starved(rt)
        ):
            _back_off(rt)
        if rt.finished:
            self._sweep(rt)
        return True

    def submit(self, coro: Coroutine[Any, Any, T], /) -> concurrent.futures.Future[T]:
        """Schedule ``coro`` and return a future for its result.

        The future carries the coroutine's result or exception; exceptions are counted as
        failures but not logged, since the caller receives them. ``future.cancel()`` cancels the
        coroutine whether or not it has started.

        Raises:
            TypeError: ``coro`` is not a coroutine object.
            BacklogFull: The backlog is full (whatever ``on_full`` says, except that ``"block"``
                first waits up to ``block_timeout``).
            BridgeClosed: The bridge was shut down in this process.
        """
        if not asyncio.iscoroutine(coro):
            raise not_a_coroutine("submit", coro)
        rt = self._rt
        if not rt.here[0]:
            rt = self._start_for(coro)
        if rt.closed:
            self._drop(rt, coro, "closed", warn=False)
            raise BridgeClosed("the bridge was shut down in this process and accepts no more work")
        backlog = len(rt.inbox)
        if backlog + rt.running >= self._max_pending:
            self._make_room(rt, coro, raise_full=True)  # returns only once there is room
        future = _BridgeFuture[T](rt.loop)  # type: ignore[arg-type]
        rt.inbox.append((coro, _copy_context(), future))
        self._wake(rt, backlog)
        return future

    def _wake(self, rt: _Runtime, backlog: int) -> None:
        """After an append: queue the loop's wake-up, or back off if it is overdue."""
        if not rt.scheduled:
            rt.scheduled = True
            rt.scheduled_at = _monotonic()
            rt.starved = False  # a finding about an earlier wake-up is stale
            try:
                rt.loop.call_soon_threadsafe(self._pull, rt)  # type: ignore[union-attr]
            except RuntimeError:
                self._sweep(rt)
                return
        elif backlog >= _BACKLOG_BEFORE_BACKOFF and (
            rt.starved if backlog & _LOOK_EVERY else _is_starved(rt)
        ):
            _back_off(rt)
        if rt.finished:
            self._sweep(rt)

    def run(self, coro: Coroutine[Any, Any, T], /, *, timeout: float | None = None) -> T:
        """Run ``coro`` on the bridge loop and block until it finishes.

        Args:
            coro: The coroutine object.
            timeout: Seconds to wait; None waits as long as it takes.

        Returns:
            The coroutine's result.

        Raises:
            TimeoutError: The timeout passed; the coroutine has been told to cancel.
            AsyncBridgeError: Called from the bridge's own loop thread or from inside any running
                event loop, where blocking would deadlock; ``await`` the coroutine instead.
            BaseException: Whatever the coroutine raised.
        """
        rt = self._rt
        if rt.pid == _getpid() and rt.in_loop_thread():
            _close_quietly(coro)
            raise AsyncBridgeError(
                "run() was called from the bridge's own event loop thread, where blocking would "
                "deadlock; use `await` on the coroutine instead"
            )
        running = asyncio._get_running_loop()
        # Under gevent with the bridge loop in a greenlet, asyncio's running-loop slot is per OS
        # thread, so request greenlets see the bridge loop as "running": that one may block.
        if running is not None and running is not rt.loop:
            _close_quietly(coro)
            raise AsyncBridgeError(
                "run() was called from a thread with a running event loop, which it would block; "
                "just `await` the coroutine (or use run_soon() to fire and forget)"
            )
        future = self.submit(coro)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise TimeoutError(
                f"run() timed out after {timeout}s; the coroutine was cancelled"
            ) from None

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> None:
        """Start this process's loop now, if it is not running yet. Idempotent.

        A loop inherited through ``fork`` is left untouched (never stopped, closed or run: the
        parent still uses it) and a fresh one is started.

        Raises:
            BridgeClosed: The bridge was shut down in this process.
        """
        rt = self._runtime_here()
        if rt.closed:
            raise BridgeClosed(
                "the bridge was shut down in this process; create a new Bridge to start again"
            )

    def get_loop(self) -> asyncio.AbstractEventLoop:
        """This process's bridge loop, started if need be.

        Raises:
            BridgeClosed: The bridge was shut down in this process.
        """
        self.start()
        loop = self._rt.loop
        assert loop is not None
        return loop

    def stats(self) -> Stats:
        """A consistent snapshot of this process's accounting. Never starts the loop."""
        rt = self._rt
        if rt.pid != _getpid():
            return Stats(pid=_getpid())
        return rt.snapshot()

    @staticmethod
    def current() -> Bridge | None:
        """The bridge whose loop is running in the calling thread, or None elsewhere."""
        owner: weakref.ref[Bridge] | None = getattr(_LOOP_THREAD, "bridge", None)
        bridge = None if owner is None else owner()
        if bridge is None:
            return None
        rt = bridge._rt
        loop = asyncio._get_running_loop()
        if loop is not None and rt.loop is loop and rt.pid == _getpid() and rt.in_loop_thread():
            return bridge
        return None

    def owns_loop(self) -> bool:
        """True when this process started the bridge's current loop (and not a parent)."""
        rt = self._rt
        return rt.pid == _getpid() and rt.loop is not None

    def in_loop_thread(self) -> bool:
        """True when called from this process's bridge loop thread."""
        rt = self._rt
        return rt.pid == _getpid() and rt.in_loop_thread()

    def add_close_callback(self, callback: Callable[[], Coroutine[Any, Any, object]]) -> None:
        """Run ``await callback()`` on the loop at shutdown, after pending work has drained.

        For resources that live on the loop, such as a shared HTTP session. Must be called from
        the bridge loop thread; the callback is forgotten with the loop (after fork).
        """
        if not self.in_loop_thread():
            raise AsyncBridgeError(
                "add_close_callback() must be called from the bridge loop thread"
            )
        self._rt.close_callbacks.append(callback)

    def drain(self, timeout: float | None = None) -> bool:
        """Wait until nothing is pending or running, without closing the bridge.

        Returns:
            True when the bridge went idle; False when the timeout passed first, or when
            shutdown ended with work still running.

        Raises:
            AsyncBridgeError: Called from the bridge loop thread.
        """
        rt = self._rt
        if rt.pid != _getpid() or rt.loop is None:
            return True
        if rt.in_loop_thread():
            raise AsyncBridgeError(
                "drain() from the bridge loop thread would deadlock; await instead"
            )
        idle = threading.Event()
        try:
            rt.loop.call_soon_threadsafe(self._when_idle, rt, idle.set)
        except RuntimeError:
            return not rt.inbox and rt.running == 0
        return idle.wait(timeout) and not rt.inbox and rt.running == 0

    def shutdown(self, timeout: float | None = None, *, log: bool = True) -> ShutdownReport:
        """Close admission, drain until the deadline, cancel the rest, and stop the loop.

        Idempotent: later calls return the first report. Never raises, and never takes longer
        than the deadline plus about one second, even when a coroutine blocks the loop.

        Args:
            timeout: The drain deadline in seconds; defaults to ``drain_timeout``.
            log: Log the report on the ``asyncbridge`` logger (at INFO when everything finished,
                at WARNING when something was cancelled or abandoned). Server adapters pass False
                and log it on the server's own logger instead.

        Returns:
            The :class:`ShutdownReport`.
        """
        started = time.monotonic()
        deadline_s = self._options.drain_timeout if timeout is None else max(0.0, float(timeout))
        pid = _getpid()
        lock = self._lifecycle_lock()
        if not lock.acquire(timeout=deadline_s + SHUTDOWN_MARGIN):
            logger.error("asyncbridge shutdown in pid %d gave up: another shutdown is stuck", pid)
            return ShutdownReport(
                self.stats(), elapsed=time.monotonic() - started, timeout=deadline_s
            )
        try:
            rt = self._rt
            if rt.pid != pid:
                rt = self._new_runtime(rt, pid)
                rt.closed = rt.finished = True
                rt.here = _fork_marker()
                self._rt = rt
            if rt.report is not None:
                return rt.report
            if rt.loop is None:
                rt.report = ShutdownReport(rt.snapshot(), elapsed=0.0, timeout=deadline_s)
                return rt.report
            if rt.in_loop_thread():
                rt.closed = True
                logger.error(
                    "asyncbridge shutdown() was called from the loop thread; admission is closed, "
                    "call shutdown() from another thread to drain"
                )
                return ShutdownReport(rt.snapshot(), elapsed=0.0, timeout=deadline_s)
            rt.report = report = self._shutdown(rt, started, deadline_s)
        finally:
            lock.release()
        if log:
            (logger.info if report.clean else logger.warning)("%s", report)
        return report

    def _shutdown(self, rt: _Runtime, started: float, deadline_s: float) -> ShutdownReport:
        loop = rt.loop
        thread = rt.thread
        assert loop is not None and thread is not None
        rt.closed = True
        deadline = started + deadline_s
        idle = threading.Event()
        cleaned = threading.Event()
        if not thread.is_alive():  # the loop thread died (see _run_loop): nothing to wait for
            cleaned.set()
        try:
            loop.call_soon_threadsafe(self._when_idle, rt, idle.set)
            idle.wait(max(0.0, deadline - time.monotonic()))
            budget = SHUTDOWN_MARGIN * 0.8
            loop.call_soon_threadsafe(self._begin_cleanup, rt, cleaned, budget)
        except RuntimeError:  # the loop is already closed (its thread died)
            pass
        cleaned.wait(max(0.0, deadline + SHUTDOWN_MARGIN * 0.9 - time.monotonic()))
        thread.join(max(0.0, deadline + SHUTDOWN_MARGIN - time.monotonic()))
        rt.finished = True
        self._sweep(rt)
        stats = rt.snapshot()
        abandoned = stats.pending + stats.running
        if abandoned:
            # Keep what is still running referenced: destroying a pending task would run its
            # code (finally blocks) from the garbage collector, at any later time.
            _ORPHANS.append(rt)
        return ShutdownReport(
            stats,
            cancelled_names=tuple(rt.cancelled_names),
            abandoned=abandoned,
            elapsed=time.monotonic() - started,
            timeout=deadline_s,
        )

    # -- process ownership ---------------------------------------------------------------------

    def _start_for(self, coro: Coroutine[Any, Any, Any]) -> _Runtime:
        """Start the loop on first use; if that fails, close ``coro`` and re-raise."""
        try:
            return self._runtime_here()
        except BaseException:
            _close_quietly(coro)
            raise

    def _lifecycle_lock(self) -> threading.Lock:
        # dict.setdefault is atomic under the GIL, so every thread of this process gets one lock.
        return self._lifecycle_locks.setdefault(_getpid(), threading.Lock())

    def _runtime_here(self) -> _Runtime:
        """This process's runtime, starting the loop if this process has none yet."""
        pid = _getpid()
        rt = self._rt
        if rt.pid == pid:  # the path taken on every call where the fork marker is unavailable
            return rt
        with self._lifecycle_lock():
            rt = self._rt
            if rt.pid == pid:
                return rt
            rt = self._new_runtime(rt, pid)
            self._options = Options().updated(options_from_env()).updated(self._explicit)
            self._apply()
            loop = (self._options.loop_factory or asyncio.new_event_loop)()
            rt.loop = loop
            thread = threading.Thread(
                target=_run_loop,
                args=(loop, weakref.ref(self)),
                name=f"asyncbridge-{pid}",
                daemon=True,
            )
            rt.thread = thread
            try:
                thread.start()
            except BaseException:
                loop.close()
                raise
            rt.here = _fork_marker()
            self._rt = rt  # published last: other threads see a runtime with its loop running
            return rt

    def _new_runtime(self, old: _Runtime, pid: int) -> _Runtime:
        """A runtime for this process, not yet published; an inherited one is orphaned."""
        if old.pid != -1 and old.pid != pid:
            _orphan(old)
            self._rt = _NOT_STARTED
        return _Runtime(pid)

    def _forget_inherited(self) -> None:
        rt = self._rt
        if rt.pid not in (-1, _getpid()):
            _orphan(rt)
            self._rt = _NOT_STARTED

    # -- loop side -----------------------------------------------------------------------------

    def _pull(self, rt: _Runtime) -> None:
        rt.scheduled = rt.starved = False
        self._start_waiting(rt)

    def _start_waiting(self, rt: _Runtime) -> None:
        inbox = rt.inbox
        if not inbox:
            return
        if rt.cleaning:
            self._cancel_unstarted(rt)
            return
        batch: list[_Item] = []
        with rt.lock:
            room = self._limit - rt.running
            while inbox and room > 0:
                batch.append(inbox.popleft())
                room -= 1
            rt.taken += len(batch)
            rt.running += len(batch)
        loop = rt.loop
        assert loop is not None
        timeout = self._options.task_timeout
        for coro, context, future in batch:
            if future is not None and not future.set_running_or_notify_cancel():
                _close_quietly(coro)
                self._count(rt, "cancelled")
                continue
            task = loop.create_task(coro, context=context)
            rt.tasks.add(task)
            handle = None if timeout is None else loop.call_later(timeout, self._expire, rt, task)
            if future is not None:
                future._task = task
                if future._cancel_requested:  # cancel() ran before the task existed
                    task.cancel()
            task.add_done_callback(functools.partial(self._on_done, rt, future, handle))
        if rt.room_waiters:
            with rt.room:
                rt.room.notify_all()

    def _expire(self, rt: _Runtime, task: asyncio.Task[Any]) -> None:
        # A task that finished in this same loop iteration is not timed out: its done
        # callbacks are merely still queued.
        if not task.done() and task.cancel():
            rt.expired.add(task)

    def _on_done(
        self,
        rt: _Runtime,
        future: _BridgeFuture[Any] | None,
        handle: asyncio.TimerHandle | None,
        task: asyncio.Task[Any],
    ) -> None:
        if handle is not None:
            handle.cancel()
        rt.tasks.discard(task)
        expired = task in rt.expired
        if expired:
            rt.expired.discard(task)
        exc: BaseException | None = None
        if expired:
            outcome = "timed_out"
            exc = TimeoutError(f"exceeded task_timeout of {self._options.task_timeout}s")
            if not task.cancelled():
                task.exception()  # mark retrieved: a coroutine may turn the cancel into an error
        elif task.cancelled():
            outcome = "cancelled"
            if rt.closed:
                rt.cancelled_names.append(coroutine_name(task.get_coro()))
        else:
            exc = task.exception()
            outcome = "completed" if exc is None else "failed"
        self._count(rt, outcome)
        if future is not None:
            if outcome == "completed":
                future.set_result(task.result())
            elif outcome == "cancelled":
                future._set_cancelled()
            else:
                assert exc is not None
                future.set_exception(exc)
        elif exc is not None:
            self._report_failure(exc, coroutine_name(task.get_coro()), outcome)
        if rt.inbox:
            self._start_waiting(rt)
        elif rt.room_waiters:
            with rt.room:
                rt.room.notify_all()
        if rt.idle_waiters and rt.running == 0 and not rt.inbox:
            waiters, rt.idle_waiters = rt.idle_waiters, []
            for waiter in waiters:
                waiter()

    def _count(self, rt: _Runtime, outcome: str) -> None:
        with rt.lock:
            rt.running -= 1
            setattr(rt, outcome, getattr(rt, outcome) + 1)

    def _report_failure(self, exc: BaseException, name: str, outcome: str) -> None:
        if outcome == "timed_out":
            logger.error("asyncbridge task %s timed out: %s", name, exc)
        else:
            logger.error("asyncbridge task %s failed", name, exc_info=exc)
        hook = self._options.on_error
        if hook is not None:
            _call_hook(hook, "on_error", exc, name)

    def _when_idle(self, rt: _Runtime, callback: Callable[[], object]) -> None:
        self._start_waiting(rt)
        if rt.running == 0 and not rt.inbox:
            callback()
        else:
            rt.idle_waiters.append(callback)

    def _begin_cleanup(self, rt: _Runtime, cleaned: threading.Event, budget: float) -> None:
        rt.loop.create_task(self._cleanup(rt, cleaned, budget))  # type: ignore[union-attr]

    async def _cleanup(self, rt: _Runtime, cleaned: threading.Event, budget: float) -> None:
        loop = asyncio.get_running_loop()
        end = loop.time() + budget
        rt.cleaning = True
        try:
            self._cancel_unstarted(rt)
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
            self._cancel_unstarted(rt)  # whatever arrived while the steps above awaited
            waiters, rt.idle_waiters = rt.idle_waiters, []
            for waiter in waiters:  # drain() callers: nothing more will run here
                waiter()
            loop.stop()
            cleaned.set()

    def _cancel_unstarted(self, rt: _Runtime) -> None:
        """Take every item left in the inbox and cancel it (counted, named, closed)."""
        inbox = rt.inbox
        items: list[_Item] = []
        with rt.lock:
            while inbox:
                items.append(inbox.popleft())
            rt.taken += len(items)
            rt.cancelled += len(items)
            rt.cancelled_names.extend(coroutine_name(coro) for coro, _, _ in items)
        for coro, _, future in items:
            _close_quietly(coro)
            if future is not None:
                future.cancel()

    def _sweep(self, rt: _Runtime) -> None:
        # Called after the loop is gone, by shutdown and by any caller whose append raced it.
        if rt.finished or (rt.loop is not None and rt.loop.is_closed()):
            self._cancel_unstarted(rt)

    # -- refusals ------------------------------------------------------------------------------

    def _make_room(
        self, rt: _Runtime, coro: Coroutine[Any, Any, Any], *, raise_full: bool = False
    ) -> bool:
        policy = self._options.on_full
        if policy == "block" and not rt.in_loop_thread():
            deadline = time.monotonic() + self._options.block_timeout
            with rt.room:
                rt.room_waiters += 1
                try:
                    while len(rt.inbox) + rt.running >= self._max_pending and not rt.closed:
                        remaining = deadline - time.monotonic()
                        if remaining <= 0:
                            break
                        # Short slices: a wake-up sent just before we started waiting is not lost
                        # for longer than one slice.
                        rt.room.wait(min(remaining, 0.05))
                    else:
                        if not rt.closed:
                            return True
                finally:
                    rt.room_waiters -= 1
            if rt.closed:  # shutdown began while we waited
                if raise_full:
                    self._drop(rt, coro, "closed", warn=False)
                    raise BridgeClosed("the bridge was shut down while waiting for room")
                self._drop(rt, coro, "closed")
                return False
        if raise_full or policy == "raise":
            self._drop(rt, coro, "full", warn=False)
            raise BacklogFull(
                f"asyncbridge backlog is full ({self._max_pending} pending); raise max_pending, "
                "lower the rate, or use on_full='drop' or 'block'"
            )
        self._drop(rt, coro, "full")
        return False

    def _drop(
        self, rt: _Runtime, coro: Coroutine[Any, Any, Any], reason: str, *, warn: bool = True
    ) -> None:
        name = coroutine_name(coro)
        _close_quietly(coro)
        now = time.monotonic()
        with rt.lock:
            attr = "dropped_full" if reason == "full" else "dropped_closed"
            setattr(rt, attr, getattr(rt, attr) + 1)
            total = getattr(rt, attr)
            last = rt.warned_at.get(reason)
            warn = warn and (last is None or now - last >= _DROP_WARNING_INTERVAL)
            if warn:
                rt.warned_at[reason] = now
        if warn:
            why = (
                f"the backlog is full ({self._max_pending} pending)"
                if reason == "full"
                else "the bridge is shut down"
            )
            logger.warning(
                "asyncbridge dropped %s: %s (%d dropped for this reason so far; warnings are "
                "limited to one per %gs)",
                name,
                why,
                total,
                _DROP_WARNING_INTERVAL,
            )
        hook = self._options.on_drop
        if hook is not None:
            _call_hook(hook, "on_drop", name, reason)


class _BridgeFuture(concurrent.futures.Future[T]):
    """A future whose ``cancel()`` also cancels the coroutine once it runs on the loop.

    ``cancel()`` on a running coroutine asks its task to cancel and returns True; the future
    becomes cancelled when the task does (a coroutine that swallows the cancellation finishes
    normally and the future carries its result, as with asyncio).
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self._loop = loop
        self._task: asyncio.Task[Any] | None = None
        self._cancel_requested = False

    def cancel(self) -> bool:
        if super().cancel():
            return True
        if self.done():
            return False
        self._cancel_requested = True  # read by the loop if the task does not exist yet
        task = self._task
        if task is not None:
            try:
                self._loop.call_soon_threadsafe(task.cancel)
            except RuntimeError:  # the loop is closed: shutdown has settled the task already
                return False
        return True

    def _set_cancelled(self) -> None:
        """Put a running future in the cancelled state (concurrent.futures has no public way)."""
        with self._condition:
            if self._state in (_FINISHED, _CANCELLED, _CANCELLED_AND_NOTIFIED):
                return
            self._state = _CANCELLED_AND_NOTIFIED
            for waiter in self._waiters:
                waiter.add_cancelled(self)
            self._condition.notify_all()
        self._invoke_callbacks()  # type: ignore[attr-defined]


def _run_loop(loop: asyncio.AbstractEventLoop, owner: weakref.ref[Bridge]) -> None:
    _LOOP_THREAD.bridge = owner
    asyncio.set_event_loop(loop)
    try:
        while True:
            try:
                loop.run_forever()
                return  # stopped by shutdown
            except (SystemExit, KeyboardInterrupt) as exc:
                # asyncio lets these escape run_forever after storing them on the task; keep
                # the loop alive: the task's done callback counts and reports the failure.
                logger.debug("asyncbridge loop resumed after a coroutine raised %r", exc)
    except BaseException:
        logger.exception("asyncbridge loop thread died; work handed to it is lost")
        raise
    finally:
        try:
            loop.close()
        except Exception:
            logger.exception("asyncbridge could not close its event loop")


async def _bounded(awaitable: Coroutine[Any, Any, object], seconds: float) -> None:
    try:
        await asyncio.wait_for(awaitable, max(0.0, seconds))
    except TimeoutError:
        logger.warning("asyncbridge shutdown step timed out: %s", coroutine_name(awaitable))
    except Exception:
        logger.exception("asyncbridge shutdown step failed: %s", coroutine_name(awaitable))


def _close_quietly(coro: object) -> None:
    close = getattr(coro, "close", None)
    if close is not None:
        try:
            close()
        except Exception:
            logger.exception("asyncbridge could not close %s", coroutine_name(coro))


def _call_hook(hook: Callable[..., object], what: str, *args: object) -> None:
    try:
        hook(*args)
    except Exception:
        logger.exception("asyncbridge %s hook %r raised; ignored", what, hook)


def _orphan(rt: _Runtime) -> None:
    """Keep an inherited runtime alive but inert; close only this process's copies of its fds."""
    _ORPHANS.append(rt)
    loop = rt.loop
    if loop is None:
        return
    for name in ("_ssock", "_csock"):
        sock = getattr(loop, name, None)
        if sock is not None:
            try:
                sock.close()
            except OSError:
                pass
    selector = getattr(loop, "_selector", None)
    if selector is not None:
        try:
            selector.close()
        except (OSError, AttributeError):
            pass


def _after_fork_in_child() -> None:
    for bridge in list(_BRIDGES):
        bridge._forget_inherited()


def _drain_at_exit() -> None:
    for bridge in list(_BRIDGES):
        if bridge.owns_loop():
            bridge.shutdown()


os.register_at_fork(after_in_child=_after_fork_in_child)
# A fallback for processes that exit without calling shutdown(). It runs after non-daemon threads
# are joined, while the daemon loop thread is still alive, and does nothing in a process that
# never started a loop (owns_loop() compares PIDs).
atexit.register(_drain_at_exit)
