"""One process's loop state and counters (:class:`Runtime`), and runtimes orphaned by fork."""

from __future__ import annotations

import asyncio
import collections
import contextvars
import mmap
import threading
import time
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from ._config import Options
from ._inputs import coroutine_name
from ._stats import ShutdownReport, Stats

if TYPE_CHECKING:
    from ._future import BridgeFuture
    from ._publish import Publisher, Timing
    from ._watchdog import Watch

__all__ = ["NOT_STARTED", "ORPHANS", "Item", "Runtime", "orphan"]

_SNAPSHOT_TRIES = 1000

Item = tuple[Coroutine[Any, Any, Any], contextvars.Context, "BridgeFuture[Any] | None"]


class Runtime:
    """Everything that belongs to one process's loop. After fork the child replaces it whole."""

    __slots__ = (
        "backoffs",
        "cancelled",
        "cancelled_names",
        "cleaning",
        "close_callbacks",
        "closed",
        "completed",
        "dead",
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
        "options",
        "pid",
        "publisher",
        "report",
        "restarts",
        "room",
        "room_waiters",
        "running",
        "scheduled",
        "scheduled_at",
        "starved",
        "stopping",
        "taken",
        "tasks",
        "thread",
        "timed_out",
        "timing",
        "version",
        "warned_at",
        "watch",
    )

    def __init__(self, pid: int, options: Options | None = None) -> None:
        self.pid = pid
        # The bridge's options in force, for the loop side; configure() replaces the reference.
        self.options = Options() if options is None else options
        # Nonzero only in the process that owns this runtime (see fork_marker). The runtime is
        # published to callers only once its loop runs, so a nonzero byte means "use me".
        self.here: mmap.mmap | bytearray = bytearray(1)
        self.loop: asyncio.AbstractEventLoop | None = None
        self.thread: threading.Thread | None = None
        # Accepted work that has not started, oldest first. Callers append, the loop pops.
        self.inbox: collections.deque[Item] = collections.deque()
        # True while a wake-up (pull) is queued on the loop: later callers need not queue another.
        self.scheduled = False
        self.scheduled_at = 0.0  # when `scheduled` was set (time.monotonic)
        # A caller's last look found the wake-up overdue; the next look, pull or wake-up resets it.
        self.starved = False
        # Back-offs paid for the pending wake-up; past a few, the loop is blocked, not starved.
        self.backoffs = 0
        self.closed = False  # admission closed by shutdown
        self.cleaning = False  # past the drain: nothing more may start on the loop
        self.finished = False  # the loop is gone; whoever appends now must sweep the inbox
        self.stopping = False  # shutdown is stopping the loop: any other loop.stop() is stray
        self.dead = False  # the loop thread ended outside shutdown: admission is closed
        self.restarts = 0  # stray loop.stop() calls survived (the loop resumed)
        # Serialises the writers of the accounting (the loop thread, and whoever sweeps the inbox
        # once the loop is gone). Never held while user code runs, and never taken by readers or
        # by callers handing work over: a signal handler may interrupt any frame of the main
        # thread, and must never find a lock held there that the loop needs in order to drain.
        self.lock = threading.RLock()
        # A sequence lock for readers: odd while a writer is between two updates. snapshot()
        # retries until it reads the same even value before and after.
        self.version = 0
        self.taken = 0  # items removed from the inbox: started, or swept and cancelled
        self.running = 0
        self.completed = 0
        self.failed = 0
        self.timed_out = 0
        self.cancelled = 0
        self.dropped_full = 0
        self.dropped_closed = 0
        # Running coroutines, each with the task that runs it (the task's own coroutine is a
        # wrapper that counts the outcome).
        self.tasks: dict[Coroutine[Any, Any, Any], asyncio.Task[Any]] = {}
        self.expired: set[asyncio.Task[Any]] = set()
        self.cancelled_names: list[str] = []
        self.idle_waiters: list[Callable[[], object]] = []
        self.close_callbacks: list[Callable[[], Coroutine[Any, Any, object]]] = []
        # Reentrant: a signal handler's run_soon(on_full="block") may interrupt a caller that is
        # waiting here. The loop only ever tries it without blocking (see notify_room).
        self.room = threading.Condition(threading.RLock())
        self.room_waiters = 0
        self.warned_at: dict[str, float] = {}
        self.report: ShutdownReport | None = None
        # Operators' view (see _publish and _watchdog): the status file the loop rewrites at
        # most once per turn, the jobs' wait and run times, the stall watchdog's heartbeat.
        self.publisher: Publisher | None = None
        self.timing: Timing | None = None
        self.watch: Watch | None = None

    def in_loop_thread(self) -> bool:
        # Compare Thread objects, not idents: a finished loop thread's ident is reused by the
        # next thread the OS starts, which may be another bridge's loop thread.
        return self.thread is not None and self.thread is threading.current_thread()

    def snapshot(self) -> Stats:
        """A consistent snapshot, read without a lock (see ``version``); safe in a signal handler.

        If a writer in this same thread was interrupted between two updates (a signal handler
        asking for stats while the main thread sweeps), the version never settles: after a
        bounded number of tries the last read is returned, off by at most that one update.
        """
        for attempt in range(_SNAPSHOT_TRIES):
            before = self.version
            if before & 1 and attempt < _SNAPSHOT_TRIES - 1:
                time.sleep(0)  # let the writer finish
                continue
            pending = len(self.inbox)
            taken, running = self.taken, self.running
            done = (self.completed, self.failed, self.timed_out, self.cancelled)
            if self.version == before:
                break
        return Stats(
            accepted=taken + pending,
            completed=done[0],
            failed=done[1],
            timed_out=done[2],
            cancelled=done[3],
            pending=pending,
            running=running,
            dropped={"full": self.dropped_full, "closed": self.dropped_closed},
            pid=self.pid,
            loop_running=self.thread is not None and self.thread.is_alive() and not self.dead,
            loop_restarts=self.restarts,
            stalls=0 if self.watch is None else self.watch.stalls,
            longest_stall=0.0 if self.watch is None else self.watch.longest_stall(),
        )

    def notify_room(self) -> None:
        """Wake callers waiting for room (``on_full="block"``), from the loop, never blocking.

        The condition's lock may be held by a main-thread frame that a signal handler
        interrupted, and that handler may be waiting for this loop; a skipped notification costs
        a waiter at most one of its 50 ms slices.
        """
        room = self.room
        if room.acquire(blocking=False):
            try:
                room.notify_all()
            finally:
                room.release()

    def running_names(self) -> tuple[str, ...]:
        """Qualified names of what is still pending or running, for a shutdown that gave up."""
        for _ in range(3):  # the loop may still change the set under us
            try:
                running = [c for c, t in list(self.tasks.items()) if not t.done()]
                pending = [item[0] for item in list(self.inbox)]
                break
            except RuntimeError:
                continue
        else:
            return ()
        return tuple(coroutine_name(c) for c in running + pending)


NOT_STARTED = Runtime(-1)

# Runtimes inherited through fork, or abandoned by a shutdown. Their loop, thread and queued
# coroutines belong to the parent (or to a loop nobody can stop); dropping the last reference would
# let the garbage collector close coroutines here, running their ``finally`` blocks (and maybe
# writing to sockets the parent still uses) at any later time.
ORPHANS: list[Runtime] = []


def orphan(rt: Runtime) -> None:
    """Keep an inherited runtime alive but inert; close only this process's copies of its fds."""
    ORPHANS.append(rt)
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
