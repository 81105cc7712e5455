"""One process's loop state and counters (:class:`Runtime`), and runtimes orphaned by fork."""

from __future__ import annotations

import asyncio
import collections
import contextvars
import mmap
import threading
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from ._config import Options
from ._stats import ShutdownReport, Stats

if TYPE_CHECKING:
    from ._future import BridgeFuture

__all__ = ["NOT_STARTED", "ORPHANS", "Item", "Runtime", "orphan"]

Item = tuple[Coroutine[Any, Any, Any], contextvars.Context, "BridgeFuture[Any] | None"]


class Runtime:
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
        "options",
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
