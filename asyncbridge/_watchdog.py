"""The stall watchdog: a heartbeat on the loop, and one thread per process that notices when it
stops.

The loop runs :meth:`Watch.beat` every ``interval`` seconds (``call_later``; a tenth of
``stall_warning``, within 10-250 ms). The watchdog thread sleeps until the moment a beat would be
``stall_warning`` overdue, and looks then: a beat that is that late means the loop has had no
turn for at least that long. It logs one WARNING when the stall starts (the running coroutine's
qualified name, the loop thread's current ``file:line`` and function, never locals or
arguments) and one when the loop turns again, with the total. Idle, that is one short callback on
the loop per interval and one wake-up of the thread per ``stall_warning``; callers' hand-off path
is not involved at all.

The same look notices a loop thread that ended, or a loop that stopped, while no shutdown was
under way, and logs it once at ERROR. State is per process: after ``fork`` the child has no
watchdog thread and starts its own when its loop starts.
"""

from __future__ import annotations

import asyncio
import os
import sys
import threading
import time
import types
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from . import _publish
from ._inputs import coroutine_name
from ._log import logger

if TYPE_CHECKING:
    from ._runtime import Runtime

__all__ = [
    "Culprit",
    "Watch",
    "beat_interval",
    "unwatch",
    "unwatch_runtime",
    "watch",
    "watch_runtime",
]

_CO_COROUTINE = 0x80
_CO_ITERABLE_COROUTINE = 0x100

_monotonic = time.monotonic


def beat_interval(stall_warning: float) -> float:
    """Seconds between heartbeats for a given ``stall_warning``."""
    return min(max(stall_warning / 10.0, 0.01), 0.25)


class Culprit:
    """What the loop thread was doing when a stall was noticed: names and places, no values."""

    __slots__ = ("coroutine", "filename", "function", "lineno")

    def __init__(self, coroutine: str, filename: str, lineno: int, function: str) -> None:
        self.coroutine = coroutine
        self.filename = filename
        self.lineno = lineno
        self.function = function

    def where(self) -> str:
        if not self.filename:
            return "an unknown place (no Python frame)"
        return f"{self.filename}:{self.lineno} in {self.function}"

    def __str__(self) -> str:
        if self.coroutine.startswith("("):  # no coroutine of the app's is on the stack
            return f"{self.coroutine[1:-1]} at {self.where()}"
        return f"coroutine {self.coroutine} at {self.where()}"


_PACKAGE = os.path.dirname(os.path.abspath(__file__)) + os.sep
_ASYNCIO = os.path.dirname(os.path.abspath(asyncio.__file__)) + os.sep


def _printable(name: str) -> str:
    # As coroutine_name: one printable line of bounded length, whatever the code object says.
    if len(name) > 200 or not name.isprintable():
        name = name[:200].encode("unicode_escape").decode("ascii")[:200]
    return name


def _culprit(loop: asyncio.AbstractEventLoop, ident: int | None) -> Culprit:
    frame: types.FrameType | None = None
    if ident is not None:
        frame = sys._current_frames().get(ident)
    coroutine = ""
    filename, lineno, function = "", 0, ""
    if frame is not None:
        code = frame.f_code
        filename, lineno, function = code.co_filename, frame.f_lineno or 0, code.co_qualname
        # The job is the outermost coroutine on the stack that is not asyncbridge's own (the
        # task's coroutine is the core's wrapper, which awaits the job).
        f: types.FrameType | None = frame
        while f is not None:
            c = f.f_code
            if c.co_flags & (
                _CO_COROUTINE | _CO_ITERABLE_COROUTINE
            ) and not c.co_filename.startswith(_PACKAGE):
                coroutine = c.co_qualname
            f = f.f_back
    del frame
    if not coroutine:
        try:
            task = asyncio.current_task(loop)
        except RuntimeError:
            task = None
        job_code = getattr(task.get_coro(), "cr_code", None) if task is not None else None
        if task is not None and not (job_code and job_code.co_filename.startswith(_PACKAGE)):
            coroutine = coroutine_name(task.get_coro())
    if not coroutine:
        if filename.startswith(_PACKAGE):
            coroutine = "(asyncbridge's own work)"
        elif filename.startswith(_ASYNCIO) and function != "Handle._run":
            coroutine = "(asyncio's own work)"
        else:  # a callback (a C function such as time.sleep called by Handle._run, or Python's)
            coroutine = "(a callback, no coroutine)"
    return Culprit(
        _printable(coroutine),
        filename,
        lineno,
        _printable(function),
    )


class Watch:
    """The watchdog's view of one loop: its heartbeat, and its stall episodes.

    Args:
        loop: The loop to watch.
        stall_warning: Returns the threshold in seconds, or None while disabled; read at every
            look, so that ``configure()`` applies at once.
        shutting_down: Returns True once a shutdown has begun (a loop that ends then is fine).
        on_stall: Called from the watchdog thread when a stall starts (with its start time,
            ``time.time()``) and ends (with 0.0).
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        stall_warning: Callable[[], float | None],
        shutting_down: Callable[[], bool],
        on_stall: Callable[[float], object] | None = None,
        thread: threading.Thread | None = None,
    ) -> None:
        self.loop = loop
        self.thread = thread
        self.threshold = stall_warning
        self.shutting_down = shutting_down
        self.on_stall = on_stall
        self.pid = os.getpid()
        self.ident: int | None = None  # the loop's OS thread, recorded by the first beat
        self.interval = 0.1
        self.last_beat = _monotonic()
        self.beating = False
        self.handle: asyncio.TimerHandle | None = None
        self.stalls = 0
        self.longest = 0.0
        self.since = 0.0  # monotonic start of the stall in progress, 0.0 when none
        self.culprit: Culprit | None = None
        self.ended = False  # the loop ended (shutdown or not); the watch is over
        self.on_end: Callable[[], object] | None = None  # called once the loop has ended

    # -- on the loop ---------------------------------------------------------------------------

    def beat(self) -> None:
        """The heartbeat, run by the loop: note the time and schedule the next one."""
        if self.ident is None:
            self.ident = _real_get_ident()
        self.last_beat = _monotonic()
        threshold = self.threshold()
        if threshold is None or self.ended:
            self.beating = False
            self.handle = None
            return
        self.interval = beat_interval(threshold)
        self.handle = self.loop.call_later(self.interval, self.beat)

    def start(self) -> None:
        """Start the heartbeat (from any thread); a no-op while it beats."""
        if self.beating:
            return
        self.beating = True
        self.last_beat = _monotonic()
        try:
            self.loop.call_soon_threadsafe(self.beat)
        except RuntimeError:  # the loop is closed
            self.beating = False

    # -- in the watchdog thread ----------------------------------------------------------------

    def longest_stall(self) -> float:
        """The longest stall so far, the one in progress included, in seconds."""
        if self.since:
            return max(self.longest, _monotonic() - self.since)
        return self.longest

    def look(self, now: float) -> float:
        """Check this loop; return when it next needs a look (monotonic seconds)."""
        if self._loop_ended():
            self._finish(now)
            return now + 3600.0
        threshold = self.threshold()
        if threshold is None or not self.beating:
            if self.since:
                self._end_stall(self.last_beat)
            return now + 1.0
        due = self.last_beat + self.interval
        if self.since:
            if self.last_beat > self.since:  # the loop turned again
                self._end_stall(self.last_beat)
                return self.last_beat + self.interval + threshold
            return now + self.interval
        if now - due >= threshold:
            self._start_stall(due, now)
            return now + self.interval
        return due + threshold

    def _loop_ended(self) -> bool:
        if self.ended:
            return True
        if self.loop.is_closed():
            return True
        thread = self.thread
        return thread is not None and not _is_greenlet_thread(thread) and not thread.is_alive()

    def _finish(self, now: float) -> None:
        if self.ended:
            return
        self.ended = True
        if self.since:
            self._end_stall(now)
        if self.on_end is not None:
            self.on_end()
        if not self.shutting_down():
            logger.error(
                "asyncbridge: the loop of pid %d ended outside shutdown (its thread died or a "
                "coroutine called loop.stop()); work handed to it no longer runs",
                self.pid,
            )

    def _start_stall(self, due: float, now: float) -> None:
        self.since = due
        self.stalls += 1
        self.culprit = _culprit(self.loop, self.ident)
        if self.on_stall is not None:
            self.on_stall(time.time() - (now - due))
        logger.warning(
            "asyncbridge: the loop of pid %d has had no turn for %.1fs: %s is blocking it "
            "(blocking code on the loop holds up every other job of this process: await "
            "instead, or move it off the loop with asyncio.to_thread)",
            self.pid,
            now - due,
            self.culprit,
        )

    def _end_stall(self, resumed: float) -> None:
        duration = max(0.0, resumed - self.since)
        self.longest = max(self.longest, duration)
        culprit = self.culprit
        self.since = 0.0
        self.culprit = None
        if self.on_stall is not None:
            self.on_stall(0.0)
        logger.warning(
            "asyncbridge: the loop of pid %d turned again after a stall of %.1fs (%s)",
            self.pid,
            duration,
            culprit,
        )


# -- the process's watchdog thread -----------------------------------------------------------


class _Watchdog:
    """One per process: the thread and the watches it looks after."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.watches: list[Watch] = []
        self.lock = _real_allocate_lock()  # guards `watches`
        self.wake = _real_allocate_lock()  # released to wake the thread early
        self.wake.acquire()
        self.started = False
        self.thread: threading.Thread | None = None  # None under gevent (a raw OS thread)

    def add(self, w: Watch) -> None:
        with self.lock:
            if w not in self.watches:
                self.watches.append(w)
            start, self.started = not self.started, True
        if start:
            self.thread = _real_start_thread(self.run, f"asyncbridge-watchdog-{self.pid}")
        self.poke()

    def remove(self, w: Watch, *, wait: bool = False) -> None:
        """Stop watching ``w``; the thread ends with the last watch (``wait``: join it)."""
        with self.lock:
            if w in self.watches:
                self.watches.remove(w)
            last = not self.watches
        if last:
            self.poke()
            thread = self.thread
            if wait and thread is not None and thread is not threading.current_thread():
                thread.join(1.0)

    def poke(self) -> None:
        try:
            self.wake.release()
        except RuntimeError:  # already released: a wake-up is pending
            pass

    def run(self) -> None:
        while _current is self and self.pid == os.getpid():
            now = _monotonic()
            with self.lock:
                watches = list(self.watches)
                if not watches:  # nothing left to watch: end; the next watch starts a thread
                    self.started = False
                    return
            next_look = now + 3600.0
            for w in watches:
                try:
                    when = w.look(now)
                except Exception:
                    logger.exception("asyncbridge watchdog failed; it keeps going")
                    when = now + 1.0
                if w.ended:
                    self.remove(w)
                next_look = min(next_look, when)
            self.wake.acquire(timeout=min(3600.0, max(0.001, next_look - _monotonic())))


_current: _Watchdog | None = None


def _watchdog() -> _Watchdog:
    global _current
    if _current is None or _current.pid != os.getpid():
        _current = _Watchdog()
    return _current


def watch(w: Watch) -> Watch:
    """Start watching ``w``'s loop in this process; its heartbeat starts now."""
    w.start()
    _watchdog().add(w)
    return w


def unwatch(w: Watch) -> None:
    """Stop watching (the loop is being shut down)."""
    w.ended = True
    handle = w.handle
    if handle is not None:
        handle.cancel()
    current = _current
    if current is not None and current.pid == os.getpid():
        current.remove(w, wait=True)


def watch_runtime(rt: Runtime) -> None:
    """Watch ``rt``'s loop if ``stall_warning`` is set (at loop start, and after ``configure``).

    Idempotent; a heartbeat stopped by ``stall_warning=None`` starts again when it is set."""
    if rt.options.stall_warning is None or rt.loop is None or rt.stopping:
        return
    w = rt.watch
    if w is None:
        publisher = rt.publisher

        def on_stall(since: float) -> None:
            if publisher is not None:
                publisher.set_stalled(since)

        def on_end() -> None:
            if not rt.stopping:
                _publish.loop_ended(rt)

        w = Watch(
            rt.loop,
            lambda: rt.options.stall_warning,
            # The core logs a loop thread that died (run_loop) and resumes a stray stop; the
            # watchdog speaks only if neither happened and no shutdown is under way.
            lambda: rt.stopping or rt.closed or rt.dead,
            on_stall,
            rt.thread,
        )
        w.on_end = on_end
        rt.watch = w
    watch(w)


def unwatch_runtime(rt: Runtime) -> None:
    """Shutdown is stopping ``rt``'s loop: stop watching it."""
    if rt.watch is not None:
        unwatch(rt.watch)


def _after_fork_in_child() -> None:
    global _current
    _current = None  # the parent's thread does not exist here; its locks may be held


os.register_at_fork(after_in_child=_after_fork_in_child)


# -- real OS threads, even under gevent's monkey-patching -------------------------------------


def _gevent_original(module: str, name: str) -> Any:
    monkey = sys.modules.get("gevent.monkey")
    if monkey is not None and monkey.is_module_patched(module):
        return monkey.get_original(module, name)
    return None


def _real_get_ident() -> int:
    original = _gevent_original("_thread", "get_ident")
    return int(original()) if original is not None else threading.get_ident()


def _real_allocate_lock() -> Any:
    original = _gevent_original("_thread", "allocate_lock")
    return original() if original is not None else threading.Lock()


def _real_start_thread(target: Callable[[], None], name: str) -> threading.Thread | None:
    # Under gevent, threading.Thread makes a greenlet, which a blocked hub would block too.
    original = _gevent_original("_thread", "start_new_thread")
    if original is not None:
        original(target, ())
        return None
    thread = threading.Thread(target=target, name=name, daemon=True)
    thread.start()
    return thread


def _is_greenlet_thread(thread: threading.Thread) -> bool:
    # Asking a gevent-patched Thread whether it is alive from a real OS thread is not safe; the
    # loop's closed flag says the same thing there.
    return type(thread).__module__.startswith("gevent")
