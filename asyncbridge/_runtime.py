"""One process's loop state and counters (:class:`Runtime`), and runtimes orphaned by fork."""

from __future__ import annotations

import asyncio
import collections
import contextvars
import mmap
import threading
import time
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, Protocol

from ._config import Options
from ._failures import Summaries
from ._inputs import coroutine_name
from ._stats import ShutdownReport, Stats

if TYPE_CHECKING:
    from ._future import BridgeFuture
    from ._publish import Publisher, Timings
    from ._watchdog import Watch

__all__ = [
    "DEFAULT_LANE",
    "NOT_STARTED",
    "ORPHANS",
    "BatchQueueLike",
    "Item",
    "LaneState",
    "Runtime",
    "orphan",
]

_SNAPSHOT_TRIES = 1000

Item = tuple[Coroutine[Any, Any, Any], contextvars.Context, "BridgeFuture[Any] | None"]

#: The lane of the module-level functions and of ``Bridge.run_soon``: the runtime itself.
DEFAULT_LANE = "default"


class BatchQueueLike(Protocol):
    """A batcher's items waiting in a lane (``_batcher.BatchQueue``), as the loop side sees it."""

    name: str

    def __len__(self) -> int: ...

    def start(self, room: int) -> int:
        """Start due flushes in at most ``room`` slots; return how many started."""

    def hurry(self) -> None:
        """A drain began: everything waiting is due now."""

    def take_all(self) -> list[Any]:
        """Remove every waiting item (under the writer lock) and return them."""


class LaneState:
    """One lane's admission, concurrency limit and counters in one process.

    The default lane is the :class:`Runtime` itself, so that ``Bridge.run_soon``'s hot path reads
    the runtime's own attributes; every other lane is a ``LaneState`` in its runtime's ``lanes``.
    A lane's counters are written like the runtime's: under its ``lock``, inside ``version``.
    """

    __slots__ = (
        "backoffs",
        "busy",
        "cancelled",
        "completed",
        "dropped_closed",
        "dropped_full",
        "explicit",
        "failed",
        "inbox",
        "name",
        "options",
        "passing",
        "queues",
        "resuming",
        "retries",
        "returning",
        "room",
        "room_waiters",
        "running",
        "runtime",
        "scheduled",
        "scheduled_at",
        "starting",
        "starved",
        "taken",
        "timed_out",
    )

    def __init__(
        self, runtime: Runtime, name: str, explicit: dict[str, Any], options: Options
    ) -> None:
        self.runtime = runtime
        self.name = name
        self.explicit = explicit  # the options the lane sets itself; the rest are the bridge's
        # The options in force (the bridge's, with the lane's own over them), for the loop side
        # and for admission; configure() replaces the reference.
        self.options = options
        # Accepted work that has not started, oldest first. Callers append, the loop pops.
        self.inbox: collections.deque[Item] = collections.deque()
        # True while a wake-up (pull) is queued on the loop: later callers need not queue another.
        self.scheduled = False
        self.scheduled_at = 0.0  # when `scheduled` was set (time.monotonic)
        # A caller's last look found the wake-up overdue; the next look, pull or wake-up resets it.
        self.starved = False
        # Back-offs paid for the pending wake-up; past a few, the loop is blocked, not starved.
        self.backoffs = 0
        self.taken = 0  # items removed from the inbox: started, or swept and cancelled
        self.running = 0  # started and not finished: coroutines, and the items of flushes
        # Concurrency slots held (at most max_concurrency): a coroutine or a flush holds one,
        # except while asyncbridge.retrying() sleeps between two tries. The loop's own.
        self.busy = 0
        self.completed = 0
        self.failed = 0
        self.timed_out = 0
        self.cancelled = 0
        self.dropped_full = 0
        self.dropped_closed = 0
        self.retries = 0
        # Retries whose sleep is over, waiting for a slot; served before new work.
        self.returning: collections.deque[asyncio.Future[None]] = collections.deque()
        # Batchers' items waiting in this lane (one queue per batcher in this process).
        self.queues: list[BatchQueueLike] = []
        # Reentrant: a signal handler's run_soon(on_full="block") may interrupt a caller that is
        # waiting here. The loop only ever tries it without blocking (see notify_room).
        self.room = threading.Condition(threading.RLock())
        self.room_waiters = 0
        # True while a pass of start_waiting is queued on the loop (see _scheduler.refill).
        self.resuming = False
        # What the pass in progress has taken from the inbox and not yet started; `passing`
        # is True while that pass makes its tasks (see _scheduler._fill).
        self.starting: collections.deque[Item] = collections.deque()
        self.passing = False

    def backlog(self) -> int:
        """Accepted work waiting to start: coroutines in the inbox, and items of batchers."""
        waiting = len(self.inbox)
        for queue in self.queues:
            waiting += len(queue)
        return waiting

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

    def read(self) -> Stats:
        """This lane's counters as a :class:`Stats` (the caller makes the read consistent)."""
        pending = self.backlog()
        return Stats(
            accepted=self.taken + pending,
            completed=self.completed,
            failed=self.failed,
            timed_out=self.timed_out,
            cancelled=self.cancelled,
            pending=pending,
            running=self.running,
            dropped={"full": self.dropped_full, "closed": self.dropped_closed},
            pid=self.runtime.pid,
            retries=self.retries,
        )


class Runtime(LaneState):
    """Everything that belongs to one process's loop. After fork the child replaces it whole.

    It is also the default lane's state (see :class:`LaneState`).
    """

    __slots__ = (
        "cancelled_names",
        "cleaning",
        "close_callbacks",
        "closed",
        "dead",
        "drain_deadline",
        "expired",
        "finished",
        "here",
        "idle_waiters",
        "lane_of",
        "lanes",
        "lock",
        "loop",
        "pid",
        "publisher",
        "report",
        "restarts",
        "resting",
        "stopping",
        "summaries",
        "tasks",
        "thread",
        "timing",
        "version",
        "watch",
    )

    def __init__(self, pid: int, options: Options | None = None) -> None:
        # The default lane's options are the bridge's; configure() replaces the reference.
        super().__init__(self, DEFAULT_LANE, {}, Options() if options is None else options)
        self.pid = pid
        # Nonzero only in the process that owns this runtime (see fork_marker). The runtime is
        # published to callers only once its loop runs, so a nonzero byte means "use me".
        self.here: mmap.mmap | bytearray = bytearray(1)
        self.loop: asyncio.AbstractEventLoop | None = None
        self.thread: threading.Thread | None = None
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
        # Every lane of this process by name, this runtime (the default lane) included. Replaced
        # whole when a lane is added, so that readers may iterate it without a lock.
        self.lanes: dict[str, LaneState] = {DEFAULT_LANE: self}
        # Running tasks, each with the coroutine it runs (the task's own coroutine is a wrapper
        # that counts the outcome). Keyed by task: one coroutine may be handed over twice.
        self.tasks: dict[asyncio.Task[Any], Coroutine[Any, Any, Any]] = {}
        self.expired: set[asyncio.Task[Any]] = set()
        self.cancelled_names: list[str] = []
        self.idle_waiters: list[Callable[[], object]] = []
        self.close_callbacks: list[Callable[[], Coroutine[Any, Any, object]]] = []
        # The lane of each running task of a lane other than the default one.
        self.lane_of: dict[asyncio.Task[Any], LaneState] = {}
        # Sleeps of asyncbridge.retrying() between two tries: a drain wakes them early.
        self.resting: set[asyncio.Future[None]] = set()
        self.drain_deadline: float | None = None  # time.monotonic() of the drain's deadline
        # The first failure or refusal of each kind in full, then one summary per interval.
        self.summaries = Summaries(self._log_interval)
        self.summaries.schedule = self._summarise_later
        self.report: ShutdownReport | None = None
        # Operators' view (see _publish and _watchdog): the status file the loop rewrites at
        # most once per turn, the jobs' wait and run times, the stall watchdog's heartbeat.
        self.publisher: Publisher | None = None
        self.timing: Timings | None = None
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
        lanes = list(self.lanes.values())
        for attempt in range(_SNAPSHOT_TRIES):
            before = self.version
            if before & 1 and attempt < _SNAPSHOT_TRIES - 1:
                time.sleep(0)  # let the writer finish
                continue
            each = [lane.read() for lane in lanes]
            if self.version == before:
                break
        return Stats(
            accepted=sum(s.accepted for s in each),
            completed=sum(s.completed for s in each),
            failed=sum(s.failed for s in each),
            timed_out=sum(s.timed_out for s in each),
            cancelled=sum(s.cancelled for s in each),
            pending=sum(s.pending for s in each),
            running=sum(s.running for s in each),
            dropped={
                "full": sum(s.dropped["full"] for s in each),
                "closed": sum(s.dropped["closed"] for s in each),
            },
            pid=self.pid,
            loop_running=self.thread is not None and self.thread.is_alive() and not self.dead,
            retries=sum(s.retries for s in each),
            lanes={lane.name: s for lane, s in zip(lanes, each, strict=True)},
            loop_restarts=self.restarts,
            stalls=0 if self.watch is None else self.watch.stalls,
            longest_stall=0.0 if self.watch is None else self.watch.longest_stall(),
        )

    def running_names(self) -> tuple[str, ...]:
        """Qualified names of what is still pending or running, for a shutdown that gave up."""
        for _ in range(3):  # the loop may still change the set under us
            try:
                running = [c for t, c in list(self.tasks.items()) if not t.done()]
                names = [coroutine_name(c) for c in running]
                for lane in list(self.lanes.values()):
                    names.extend(coroutine_name(item[0]) for item in list(lane.starting))
                    names.extend(coroutine_name(item[0]) for item in list(lane.inbox))
                    for queue in list(lane.queues):
                        names.extend([queue.name] * len(queue))
                break
            except RuntimeError:
                continue
        else:
            return ()
        return tuple(names)

    def _log_interval(self) -> float:
        return self.options.log_interval

    def _summarise_later(self, delay: float) -> None:
        """Ask the loop to write the failure summaries in ``delay`` seconds (from any thread)."""
        loop = self.loop
        if loop is None:
            raise RuntimeError("no loop")
        loop.call_soon_threadsafe(self._summarise_in, delay)

    def _summarise_in(self, delay: float) -> None:
        self.loop.call_later(delay, self.summaries.flush)  # type: ignore[union-attr]


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
