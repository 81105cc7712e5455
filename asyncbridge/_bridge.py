"""The public :class:`Bridge`: configure, the hand-off (``run_soon``, ``submit``, ``run``), start,
stats, and shutdown's entry point. The loop side is in ``_scheduler``, admission in
``_admission``, the drain in ``_shutdown``."""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import contextvars
import logging
import os
import sys
import threading
import time
import weakref
from collections.abc import Callable, Coroutine
from types import CoroutineType
from typing import Any, TypeVar

from . import _admission, _forkmark, _publish, _scheduler, _watchdog
from ._admission import drop as _drop
from ._admission import make_room as _make_room
from ._batcher import Batcher
from ._blocking import run_and_wait
from ._config import Options, options_from_env
from ._errors import AsyncBridgeError, BridgeClosed
from ._future import BridgeFuture
from ._inputs import MAX_WAIT, clamp_wait, coroutine_name, not_a_coroutine, timeout_arg
from ._lane import Lane
from ._log import close_quietly as _close_quietly
from ._log import logger
from ._runtime import NOT_STARTED, Runtime, orphan
from ._scheduler import LOOP_THREAD, pull, run_loop, sweep, when_idle
from ._shutdown import SHUTDOWN_MARGIN, drain_runtime, wait_in_slices
from ._stats import ShutdownReport, Stats

__all__ = ["SHUTDOWN_MARGIN", "Bridge"]

T = TypeVar("T")

_getpid = os.getpid
_copy_context = contextvars.copy_context
_monotonic = time.monotonic

# The hot path's half of the back-off for a starved loop (see _admission). The backlog test comes
# first, so a loop that keeps up costs callers one comparison. Past it, only every 8th append
# reads the clock; what it finds is kept in `starved` until the next look, the loop's next pull or
# a new wake-up, so that every caller backs off meanwhile, not only the one that looked (reading
# the clock on every call made a burst's median hand-off 10-25% dearer).
_BACKLOG_BEFORE_BACKOFF = 8
_LOOK_EVERY = 7  # a mask: read the clock when the backlog is a multiple of 8

_BRIDGES: weakref.WeakSet[Bridge] = weakref.WeakSet()

# The longest drain deadline honoured: far beyond any real deadline, and small enough that the
# deadline plus the shutdown margin still fits every wait primitive.
_MAX_DEADLINE = MAX_WAIT / 4


def _interim(rt: Runtime, started: float, deadline_s: float) -> ShutdownReport:
    """A report for a caller that cannot wait for the shutdown in progress: true, not final."""
    return ShutdownReport(
        rt.snapshot() if rt.pid == _getpid() else Stats(pid=_getpid()),
        cancelled_names=tuple(rt.cancelled_names),
        elapsed=time.monotonic() - started,
        timeout=deadline_s,
        final=False,
    )


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
        self._rt = NOT_STARTED
        self._max_pending = self._options.max_pending
        # One lifecycle lock per process, made on first use there: a lock inherited through fork
        # may be held by a parent thread that does not exist in the child. Its holder is kept
        # per process too, so that a signal handler re-entering it can tell.
        self._lifecycle_locks: dict[int, threading.Lock] = {}
        self._lifecycle_owner: dict[int, threading.Thread] = {}
        # Reentrant, and only ever held for a few assignments: a signal handler may configure.
        self._config_lock = threading.RLock()
        self._deferred: list[Callable[[], object]] = []
        self._lanes: dict[str, Lane] = {}
        _BRIDGES.add(self)

    # -- configuration -------------------------------------------------------------------------

    def _apply(self) -> None:
        self._max_pending = self._options.max_pending
        for lane in list(self._rt.lanes.values()):
            _scheduler.apply_options(lane, self._options)  # what a lane does not set itself
        rt = self._rt
        if rt is NOT_STARTED:
            return
        rt.options = self._options  # the loop side reads the options from its runtime
        if rt.pid == _getpid() and rt.loop is not None and not rt.finished:
            # New limits act at once, in every lane that takes them from the bridge.
            _scheduler.options_changed(list(rt.lanes.values()))
            if self._rt.pid == _getpid():
                _watchdog.watch_runtime(self._rt)  # stall_warning may have been turned on

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
        while True:
            # Compare and swap: the swap itself has no call in it, so neither another thread
            # nor a signal handler that interrupts this very call can slip between its reads and
            # writes; whoever swapped first wins and the other computes again from it.
            before, explicit = self._options, self._explicit
            after = before.updated(options)
            with self._config_lock:
                if self._options is before and self._explicit is explicit:
                    self._options, self._explicit = after, {**explicit, **options}
                    break
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
            started = self._start_for(coro, defer=True)
            if started is None:  # deferred until this thread's loop start ends
                return True
            rt = started
        if rt.closed:
            _drop(rt, coro, "closed")
            return False
        backlog = len(rt.inbox)
        if backlog + rt.running >= self._max_pending and not _make_room(rt, coro):
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
            try:
                rt.scheduled_at = _monotonic()
                rt.starved = False  # a finding about an earlier wake-up is stale
                rt.loop.call_soon_threadsafe(pull, rt)  # type: ignore[union-attr]
            except RuntimeError:  # the loop closed under us: shutdown raced this call
                sweep(rt)
                return True
            except BaseException:
                # Interrupted (Ctrl-C) between the flag and the queued wake-up: with the flag
                # left set, no later caller would queue one and the loop would sleep forever.
                rt.scheduled = False
                raise
        elif backlog >= _BACKLOG_BEFORE_BACKOFF and (
            rt.starved if backlog & _LOOK_EVERY else _admission.is_starved(rt)
        ):
            _admission.back_off(rt)
        if rt.finished:
            sweep(rt)
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
            rt = self._start_for(coro)  # type: ignore[assignment]  # never None without defer
        if rt.closed:
            _drop(rt, coro, "closed", warn=False)
            if rt.dead:
                raise BridgeClosed(
                    "the bridge loop thread died in this process (its error was logged); it "
                    "accepts no more work"
                )
            raise BridgeClosed("the bridge was shut down in this process and accepts no more work")
        backlog = len(rt.inbox)
        if backlog + rt.running >= self._max_pending:
            _make_room(rt, coro, raise_full=True)  # returns only once there is room
        future = BridgeFuture[T](rt.loop)  # type: ignore[arg-type]
        rt.inbox.append((coro, _copy_context(), future))
        self._wake(rt, backlog)
        return future

    def _wake(self, rt: Runtime, backlog: int) -> None:
        """After an append: queue the loop's wake-up, or back off if it is overdue."""
        if not rt.scheduled:
            rt.scheduled = True
            try:
                rt.scheduled_at = _monotonic()
                rt.starved = False  # a finding about an earlier wake-up is stale
                rt.loop.call_soon_threadsafe(pull, rt)  # type: ignore[union-attr]
            except RuntimeError:
                sweep(rt)
                return
            except BaseException:  # see run_soon
                rt.scheduled = False
                raise
        elif backlog >= _BACKLOG_BEFORE_BACKOFF and (
            rt.starved if backlog & _LOOK_EVERY else _admission.is_starved(rt)
        ):
            _admission.back_off(rt)
        if rt.finished:
            sweep(rt)

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
        return run_and_wait(
            "run",
            coro,
            timeout,
            submit=self.submit,
            bridge_loop=rt.loop,
            on_loop_thread=rt.pid == _getpid() and rt.in_loop_thread(),
        )

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
        owner: weakref.ref[Bridge] | None = getattr(LOOP_THREAD, "owner", None)
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

    def lane(self, name: str, /, **options: Any) -> Lane:
        """This bridge's lane ``name``, made on the first call: see :func:`asyncbridge.lane`.

        Args:
            name: The lane's name; ``"default"`` is the bridge's own (``run_soon``'s).
            **options: ``max_pending``, ``max_concurrency``, ``on_full``, ``block_timeout``,
                ``task_timeout``; each one not given is the bridge's.

        Returns:
            The :class:`Lane`; the same object for the same name.

        Raises:
            TypeError: An option a lane cannot set, or a value of the wrong type.
            ValueError: A value out of range, options for the default lane, or options that
                differ from those the lane was made with.
        """
        lane = self._lanes.get(name) if isinstance(name, str) else None
        if lane is None:
            if name == "default" and options:
                raise ValueError(
                    "the default lane's options are the bridge's: use configure() for them"
                )
            made = Lane(self, name, options)
            lane = self._lanes.setdefault(name, made)  # atomic: racing callers get one lane
            if lane is made:
                return lane
        if options and lane.explicit_options != Lane(self, name, options).explicit_options:
            raise ValueError(
                f"lane {name!r} already exists with options {lane.explicit_options}; change "
                f"them with lane.configure(), or give this one another name"
            )
        return lane

    def batcher(
        self,
        flush: Callable[[list[T]], Coroutine[Any, Any, object]],
        /,
        *,
        max_size: int = 100,
        max_delay: float = 0.05,
        lane: Lane | str | None = None,
    ) -> Batcher[T]:
        """A :class:`Batcher` whose flushes run in ``lane`` of this bridge: see
        :func:`asyncbridge.batcher`.
        """
        return Batcher(flush, self._lane_for(lane), max_size=max_size, max_delay=max_delay)

    def _lane_for(self, lane: Lane | str | None) -> Lane:
        if lane is None:
            return self.lane("default")
        if isinstance(lane, str):
            return self.lane(lane)
        if not isinstance(lane, Lane):
            raise TypeError(f"lane must be a Lane, a lane's name or None, got {lane!r}")
        return lane

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

        Work that a shutdown in another thread cancels is no longer running either: when a
        shutdown ends while this waits, True means nothing was left behind, not that all of it
        finished (the shutdown's report tells which).

        Returns:
            True when the bridge is idle; False when the timeout passed first with work still
            pending or running, or when a shutdown or the loop thread's death ended with work
            still running.

        Raises:
            AsyncBridgeError: Called from the bridge loop thread.
            TypeError: ``timeout`` is not a number.
            ValueError: ``timeout`` is NaN.
        """
        rt = self._rt
        if rt.pid != _getpid() or rt.loop is None:
            timeout_arg("drain", timeout)
            return True
        if rt.in_loop_thread():
            raise AsyncBridgeError(
                "drain() from the bridge loop thread would deadlock; await instead"
            )
        wait = timeout_arg("drain", timeout)
        if self._lifecycle_owner.get(rt.pid) is threading.current_thread():
            # Re-entered by this very thread while it starts or shuts the bridge down (a signal
            # handler that interrupted it): waiting would wait for ourselves.
            return _scheduler.is_idle(rt)
        deadline = None if wait is None else time.monotonic() + wait
        while not rt.finished:
            idle = threading.Event()
            try:
                try:
                    rt.loop.call_soon_threadsafe(when_idle, rt, idle.set)
                except RuntimeError:  # the loop is closed
                    break
                # A loop that stops (at the end of a shutdown, or as its thread dies) after
                # taking the callback drops it with the loop, and never calls it.
                if not wait_in_slices(idle, deadline, lambda: rt.finished):
                    return _scheduler.is_idle(rt)
            finally:
                if not idle.is_set():  # gave up (or interrupted): take the waiter back
                    with contextlib.suppress(RuntimeError):
                        rt.loop.call_soon_threadsafe(_scheduler.forget_idle_waiter, rt, idle.set)
            if _scheduler.is_idle(rt):
                return True
            # Work came in (another thread, another loop) between the loop finding itself idle
            # and this check, or a shutdown still running woke the waiters as it gave up on
            # work: wait again, in the time left, until the loop is gone.
            if deadline is not None and time.monotonic() >= deadline:
                return False
        return _scheduler.is_idle(rt)

    def shutdown(self, timeout: float | None = None, *, log: bool = True) -> ShutdownReport:
        """Close admission, drain until the deadline, cancel the rest, and stop the loop.

        Idempotent: later calls return the first report. Never takes longer than the deadline
        plus about one second, even when a coroutine blocks the loop. A call that cannot wait
        for a shutdown already in progress (from another thread past its own deadline, from a
        signal handler that interrupted it, from the loop thread) returns at once with an
        interim report (``final`` is False); the shutdown in progress logs the final one.

        Args:
            timeout: The drain deadline in seconds; defaults to ``drain_timeout``. ``math.inf``
                (or any huge value) waits as long as the platform allows.
            log: Log the report on the ``asyncbridge`` logger (at INFO when everything finished,
                at WARNING when something was cancelled or abandoned). Server adapters pass False
                and log it on the server's own logger instead.

        Returns:
            The :class:`ShutdownReport`.

        Raises:
            TypeError: ``timeout`` is not a number (checked before anything is done).
            ValueError: ``timeout`` is NaN.
        """
        started = time.monotonic()
        given = timeout_arg("shutdown", timeout)
        deadline_s = min(self._options.drain_timeout if given is None else given, _MAX_DEADLINE)
        pid = _getpid()
        rt = self._rt
        if rt.pid == pid and rt.in_loop_thread():
            # Before any lock: the thread that drains holds it while it waits for this loop.
            rt.closed = True
            logger.error(
                "asyncbridge shutdown() was called from the loop thread; admission is closed, "
                "call shutdown() from another thread to drain"
            )
            return _interim(rt, started, deadline_s)
        me = threading.current_thread()
        if self._lifecycle_owner.get(pid) is me:
            # Re-entered by this very thread while it starts or shuts down the bridge: a signal
            # handler that interrupted it, or a hook it called. Waiting would wait for ourselves.
            return _interim(self._rt, started, deadline_s)
        lock = self._lifecycle_lock()
        if not lock.acquire(timeout=clamp_wait(deadline_s + SHUTDOWN_MARGIN)):
            logger.warning(
                "asyncbridge shutdown in pid %d: another thread's shutdown is still in progress "
                "after %gs; returning an interim report (the other logs the final one)",
                pid,
                deadline_s + SHUTDOWN_MARGIN,
            )
            return _interim(self._rt, started, deadline_s)
        self._lifecycle_owner[pid] = me
        try:
            rt = self._rt
            if rt.pid != pid:
                rt = self._new_runtime(rt, pid)
                rt.closed = rt.finished = True
                rt.here = _forkmark.fork_marker()
                self._rt = rt
            if rt.report is not None:
                return rt.report
            if rt.loop is None:
                rt.report = ShutdownReport(rt.snapshot(), elapsed=0.0, timeout=deadline_s)
                return rt.report
            _publish.draining(rt)
            rt.drain_deadline = started + deadline_s  # retries read it (see _retry)
            rt.report = report = drain_runtime(rt, started, deadline_s)
            rt.summaries.flush(final=True)  # what the last interval counted, before the report
            _watchdog.unwatch_runtime(rt)
            _publish.drained(rt, report.abandoned)
        finally:
            del self._lifecycle_owner[pid]
            lock.release()
        if log:
            (logger.info if report.clean else logger.warning)("%s", report)
        self._run_deferred()
        return report

    def _defer_while_busy(self, callback: Callable[[], object]) -> bool:
        """Run ``callback`` once this thread's start or shutdown of the bridge ends.

        For signal handlers: when the handler interrupted this very thread inside ``start()``
        or ``shutdown()``, it cannot wait for it, so it asks to be called again afterwards.

        Returns:
            True when deferred; False when this thread is not starting or shutting down.
        """
        if self._lifecycle_owner.get(_getpid()) is not threading.current_thread():
            return False
        self._deferred.append(callback)
        return True

    def _run_deferred(self) -> None:
        while self._deferred:
            self._deferred.pop(0)()

    # -- process ownership ---------------------------------------------------------------------

    def _start_for(self, coro: Coroutine[Any, Any, Any], *, defer: bool = False) -> Runtime | None:
        """Start the loop on first use; if that fails, close ``coro`` and re-raise.

        Returns:
            This process's runtime; None when ``coro`` was deferred instead (``defer``): a signal
            handler interrupted this very thread while it was starting the loop, so the hand-off
            is made, in the handler's context, as soon as the start ends.

        Raises:
            AsyncBridgeError: The same situation without ``defer`` (``submit``, ``run``): a
                future cannot be handed back before there is a loop.
        """
        if self._lifecycle_owner.get(_getpid()) is threading.current_thread():
            if defer:
                context = _copy_context()
                self._deferred.append(lambda: context.run(self.run_soon, coro))
                return None
            _close_quietly(coro)
            raise AsyncBridgeError(
                "submit() or run() was called from a signal handler that interrupted this "
                "thread while it was starting the bridge loop; use run_soon() there"
            )
        try:
            return self._runtime_here()
        except BaseException:
            _close_quietly(coro)
            raise

    def _lifecycle_lock(self) -> threading.Lock:
        # dict.setdefault is atomic under the GIL, so every thread of this process gets one lock.
        return self._lifecycle_locks.setdefault(_getpid(), threading.Lock())

    def _runtime_here(self) -> Runtime:
        """This process's runtime, starting the loop if this process has none yet."""
        pid = _getpid()
        rt = self._rt
        if rt.pid == pid:  # the path taken on every call where the fork marker is unavailable
            return rt
        with self._lifecycle_lock():
            self._lifecycle_owner[pid] = threading.current_thread()
            try:
                rt = self._start_here(pid)
            finally:
                del self._lifecycle_owner[pid]
        self._run_deferred()
        return rt

    def _start_here(self, pid: int) -> Runtime:
        """Start this process's loop (the caller holds the lifecycle lock)."""
        rt = self._rt
        if rt.pid == pid:
            return rt
        rt = self._new_runtime(rt, pid)
        with self._config_lock:  # a configure() meanwhile must reach the new runtime too
            self._options = rt.options = (
                Options().updated(options_from_env()).updated(self._explicit)
            )
            self._max_pending = self._options.max_pending
            return self._launch(rt, pid)

    def _launch(self, rt: Runtime, pid: int) -> Runtime:
        """Make the loop, start its thread and publish ``rt`` (lifecycle and config locks held)."""
        factory = self._options.loop_factory or asyncio.new_event_loop
        loop: object = factory()
        if not isinstance(loop, asyncio.AbstractEventLoop):
            close = getattr(loop, "close", None)
            if callable(close):
                close()
            raise TypeError(
                f"loop_factory {coroutine_name(factory)} must return an asyncio event loop, got "
                f"{coroutine_name(type(loop))}; pass a function such as asyncio.new_event_loop"
            )
        rt.loop = loop
        thread = threading.Thread(
            target=run_loop,
            args=(rt, weakref.ref(self)),
            name=f"asyncbridge-{pid}",
            daemon=True,
        )
        rt.thread = thread
        try:
            thread.start()
        except BaseException:
            loop.close()
            raise
        rt.here = _forkmark.fork_marker()
        # The exit drain is registered before anyone can hand work to this loop.
        _drain_before_multiprocessing_exit()
        self._rt = rt  # published last: other threads see a runtime with its loop running
        _publish.attach(rt)  # before the watchdog, which reports stalls through it
        _watchdog.watch_runtime(rt)
        return rt

    def _new_runtime(self, old: Runtime, pid: int) -> Runtime:
        """A runtime for this process, not yet published; an inherited one is orphaned."""
        if old.pid != -1 and old.pid != pid:
            orphan(old)
            self._rt = NOT_STARTED
        return Runtime(pid, self._options)

    def _forget_inherited(self) -> None:
        # A parent thread may have held it at the fork; no thread of the child ever will.
        self._config_lock = threading.RLock()
        rt = self._rt
        if rt.pid not in (-1, _getpid()):
            orphan(rt)
            self._rt = NOT_STARTED


# Forks seen while a bridge loop thread ran, by PID: each process warns once.
_FORK_WARNED: set[int] = set()
# The log handler locks held across a fork (see _before_fork), released on both sides after it.
_HELD_FOR_FORK: list[Any] = []


def _before_fork() -> None:
    """Before any fork: if a bridge loop runs here, warn once, and keep its log lines whole.

    A thread that is writing a log line when another forks leaves the child a stream whose
    internal buffer lock is held by a thread that does not exist there (logging resets its own
    handler locks in the child, not the streams'), so the child's first log line blocks forever.
    Holding every handler's lock across the fork means no thread is inside a handler then.
    """
    loops = [b for b in list(_BRIDGES) if b.owns_loop() and b.stats().loop_running]
    if not loops:
        return
    pid = _getpid()
    if pid not in _FORK_WARNED:
        _FORK_WARNED.add(pid)
        logger.warning(
            "asyncbridge: pid %d forks while its bridge loop thread runs; the child starts a "
            "loop of its own, but forking a threaded process can leave the child blocked on a "
            "lock held by a thread it does not have. Start the loop after fork instead: do not "
            "hand work off at import time in a server that imports the app before forking "
            "(gunicorn: add asyncbridge.gunicorn.pre_fork; uWSGI: asyncbridge.uwsgi.install(), "
            "or lazy-apps; multiprocessing: the 'spawn' or 'forkserver' start method)",
            pid,
        )
    for ref in list(getattr(logging, "_handlerList", ())):
        handler = ref()
        lock = getattr(handler, "lock", None)
        if lock is not None and lock.acquire(timeout=1.0):
            _HELD_FOR_FORK.append(lock)


def _release_held_for_fork() -> None:
    while _HELD_FOR_FORK:
        lock = _HELD_FOR_FORK.pop()
        try:
            lock.release()
        except RuntimeError:  # already reset (the child's logging re-initialised it)
            pass


def _after_fork_in_child() -> None:
    _release_held_for_fork()
    for bridge in list(_BRIDGES):
        bridge._forget_inherited()


def _drain_at_exit() -> None:
    for bridge in list(_BRIDGES):
        if bridge.owns_loop():
            bridge.shutdown()


def _drain_before_multiprocessing_exit() -> None:
    """Register the exit drain with multiprocessing, whose children end with ``os._exit``.

    A multiprocessing child (Granian's workers, a ``Pool``'s, any ``Process``) runs its
    finalizers and then calls ``os._exit``, so ``atexit`` never runs there. Its finalizer registry
    is cleared when the child starts, so this is called each time a process starts its loop.
    """
    util = sys.modules.get("multiprocessing.util")
    if util is not None:
        util.Finalize(None, _drain_at_exit, exitpriority=10)


os.register_at_fork(
    before=_before_fork,
    after_in_parent=_release_held_for_fork,
    after_in_child=_after_fork_in_child,
)
# A fallback for processes that exit without calling shutdown(). It runs after non-daemon threads
# are joined, while the daemon loop thread is still alive, and does nothing in a process that
# never started a loop (owns_loop() compares PIDs).
atexit.register(_drain_at_exit)
