"""Batching: :class:`Batcher` gathers items from any thread and flushes them in groups on the loop.

An API that takes many events per call (Pusher's batch events, a bulk insert, an analytics
``/batch`` endpoint) is served far better by one call per ten or a hundred items than by one per
item. ``add(item)`` costs about what ``run_soon`` costs: it appends to a deque and, only when the
loop does not know of waiting items yet (or ``max_size`` of them wait), queues one wake-up.

Accounting is by item: every item added is accepted or dropped; a flush that returns completes
its items, one that raises fails them all, and items still waiting when the shutdown deadline
passes are cancelled. The lane's ``max_pending`` and ``on_full`` apply to each item.
"""

from __future__ import annotations

import asyncio
import collections
import inspect
import math
import os
import threading
import types
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Generic, TypeVar, cast

from . import _admission, _scheduler
from ._inputs import as_float, coroutine_name, shown
from ._lane import Lane
from ._runtime import NOT_STARTED, LaneState

__all__ = ["BatchQueue", "Batcher"]

T = TypeVar("T")

_getpid = os.getpid


class BatchQueue(Generic[T]):
    """One batcher's items waiting in one process, on one lane; the loop side of a batcher.

    Callers append to ``items``; the loop takes up to ``max_size`` at a time. The loop knows of
    waiting items when ``armed`` (a timer runs, or a flush is due and waits for a slot);
    otherwise a caller queues a wake-up (``scheduled``), as ``run_soon`` does for its inbox.
    """

    __slots__ = (
        "armed",
        "due",
        "flush",
        "flushing",
        "items",
        "lane",
        "max_delay",
        "max_size",
        "name",
        "scheduled",
        "timer",
    )

    def __init__(
        self,
        lane: LaneState,
        flush: Callable[[list[T]], Awaitable[object]],
        max_size: int,
        max_delay: float,
        name: str,
    ) -> None:
        self.lane = lane
        self.flush = flush
        self.flushing = 0  # this queue's flushes running now
        self.max_size = max_size
        self.max_delay = max_delay
        self.name = name
        self.items: collections.deque[T] = collections.deque()
        self.scheduled = False
        self.armed = False
        self.due = False
        self.timer: asyncio.TimerHandle | None = None

    def __len__(self) -> int:
        return len(self.items)

    # -- the loop side (called by the scheduler, on the loop) -----------------------------------

    def pull(self) -> None:
        """The wake-up callers queue: look at what waits, and flush now if it is due."""
        self.scheduled = False
        if self._decide():
            _scheduler.start_waiting(self.lane)

    def _decide(self) -> bool:
        """When is what waits flushed: now (size, draining, or a drain() waiting; True), or after
        ``max_delay``?

        A drain() waiting wants what waits sent now, but only one flush of this queue at a time:
        items that come in while it flies go in the next one (see :func:`_flush`), not one flush
        each, which a stream of items would keep up as long as the drain waits.
        """
        if not self.items:
            return False
        rt = self.lane.runtime
        if len(self.items) >= self.max_size or rt.closed or (rt.idle_waiters and not self.flushing):
            self.armed = self.due = True
            return True
        if not self.armed:
            self._arm()
        return False

    def _arm(self) -> None:
        loop = self.lane.runtime.loop
        assert loop is not None
        self.armed = True
        self.timer = loop.call_later(self.max_delay, self._ripe)

    def _ripe(self) -> None:
        self.timer = None
        # `armed` goes down before the look, as in start(): a caller that appends after the look
        # sees it down and queues a wake-up.
        self.armed = False
        if not self.items:
            return  # the watch kept after a flush (see start) found nothing new
        self.armed = self.due = True
        _scheduler.start_waiting(self.lane)

    def hurry(self) -> None:
        """A drain began: what waits is due now."""
        if self.items:
            self.armed = self.due = True

    def start(self, room: int) -> int:
        """Start due flushes, at most ``room`` (free slots of the lane); return how many."""
        started = 0
        while self.due and started < room:
            # `armed` goes down before the take: a caller appending after the take then sees it
            # down and queues a wake-up, so no item is left with nobody to flush it.
            self.armed = self.due = False
            if self.timer is not None:
                self.timer.cancel()
                self.timer = None
            batch = _scheduler.take_batch(self.lane, self.items, self.max_size)
            if not batch:
                break
            self.flushing += 1  # before the start: an eager task may end it at once
            coro = self._flushing(batch)
            _scheduler.start_batch(self.lane, coro, len(batch), self.name, self._ended)
            started += 1
            if self.items:
                self._decide()  # a full batch more is due now (this loop takes it), or later
            elif self.max_delay:
                # Keep watching for max_delay: under a steady stream the next items are then
                # found by this timer (or the size kick), and the first of them need not wake
                # the loop: one wake-up per batch instead of two.
                self._arm()
        return started

    def _ended(self) -> None:
        """One of this queue's flushes ended (the scheduler calls it before freeing its slot)."""
        self.flushing -= 1
        if self.items and self.lane.runtime.idle_waiters:
            # What came in while it flew, for the drain() waiting: the slot it frees next
            # starts it.
            self.armed = self.due = True

    def _flushing(self, batch: list[T]) -> Coroutine[Any, Any, None]:
        """The flush of ``batch`` as one coroutine named after the flush function."""
        coro = _flush(self.flush, batch)
        cast(types.CoroutineType, coro).__qualname__ = self.name  # type: ignore[type-arg]
        return coro

    def take_all(self) -> list[T]:
        """Every waiting item (the caller holds the lane's writer lock and counts them)."""
        items = self.items
        taken = []
        while items:
            taken.append(items.popleft())
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.armed = self.due = False
        return taken


async def _flush(flush: Callable[[list[T]], Awaitable[object]], batch: list[T]) -> None:
    # A wrapper, so that a flush function that raises before returning its awaitable (or returns
    # an awaitable that is not a coroutine) fails its items like any other.
    await flush(batch)


_NOWHERE: BatchQueue[Any] = BatchQueue(NOT_STARTED, lambda items: asyncio.sleep(0), 1, 0.0, "")


class Batcher(Generic[T]):
    """Gathers items from any thread and awaits ``flush(items)`` on the loop, in groups.

    Made by :func:`asyncbridge.batcher`. A flush starts when ``max_size`` items wait, or when the
    oldest has waited ``max_delay`` seconds, and takes at most ``max_size`` items; flushes take
    the lane's concurrency slots like any coroutine. At shutdown, what waits is flushed at once,
    within the drain deadline. A batcher follows the process across ``fork``: the child's items
    are its own, and the parent's stay with the parent.
    """

    __slots__ = (
        "__weakref__",
        "_flush",
        "_lane",
        "_locks",
        "_max_delay",
        "_max_size",
        "_name",
        "_q",
    )

    def __init__(
        self,
        flush: Callable[[list[T]], Awaitable[object]],
        lane: Lane,
        *,
        max_size: int = 100,
        max_delay: float = 0.05,
    ) -> None:
        if inspect.iscoroutine(flush):
            raise TypeError(
                "batcher() takes the async function itself, not a coroutine: write "
                f"batcher({coroutine_name(flush)}), and it is called with each list of items"
            )
        if not callable(flush):
            raise TypeError(f"batcher() takes an async function, got {type(flush).__qualname__}")
        if isinstance(max_size, bool) or not isinstance(max_size, int):
            raise TypeError(f"max_size must be an int, got {type(max_size).__name__} {max_size!r}")
        if max_size < 1:
            raise ValueError(f"max_size must be at least 1, got {max_size}")
        if isinstance(max_delay, bool) or not isinstance(max_delay, int | float):
            raise TypeError(f"max_delay must be a number of seconds, got {max_delay!r}")
        if not math.isfinite(as_float(max_delay)) or max_delay < 0:
            raise ValueError(
                f"max_delay must be a finite number of seconds >= 0, got {shown(max_delay)}"
            )
        if not isinstance(lane, Lane):
            raise TypeError(f"lane must be a Lane, a lane's name or None, got {lane!r}")
        self._flush = flush
        self._lane = lane
        self._name = coroutine_name(flush)
        self._max_size = max_size
        self._max_delay = float(max_delay)
        self._q: BatchQueue[T] = _NOWHERE
        # One lock per process, made on first use there: a lock inherited through fork may be
        # held by a parent thread that does not exist in the child.
        self._locks: dict[int, threading.Lock] = {}
        lane._on_rebind(self._forget)

    @property
    def lane(self) -> Lane:
        """The lane whose slots and counters the flushes use."""
        return self._lane

    @property
    def max_size(self) -> int:
        """Items per flush, at most."""
        return self._max_size

    @property
    def max_delay(self) -> float:
        """Seconds the oldest item waits, at most, before a flush starts."""
        return self._max_delay

    def add(self, item: T) -> bool:
        """Queue ``item`` for the next flush; from any thread, without waiting.

        Returns:
            True when accepted; False when dropped (the lane's backlog full under
            ``on_full="drop"`` or ``"block"``, or the bridge shut down), counted and passed to
            ``on_drop`` with the flush function's name.

        Raises:
            BacklogFull: The lane's backlog is full and its ``on_full="raise"``.
        """
        q = self._q
        lane = q.lane
        rt = lane.runtime
        if not rt.here[0]:  # first use in this process, or inherited through fork
            q = self._queue_here()
            lane = q.lane
            rt = lane.runtime
        if rt.closed:
            _admission.refuse(lane, self._name, "closed")
            return False
        items = q.items
        waiting = len(items) + len(lane.inbox) if len(lane.queues) == 1 else lane.backlog()
        if waiting + lane.running >= lane.options.max_pending and not (
            _admission.make_room_for_item(lane, self._name)
        ):
            return False
        items.append(item)
        if not q.scheduled and (
            not q.armed
            or ((len(items) >= q.max_size or (rt.idle_waiters and not q.flushing)) and not q.due)
        ):  # a drain() waiting wants it sent now, not after the timer (see _decide)
            q.scheduled = True
            try:
                rt.loop.call_soon_threadsafe(q.pull)  # type: ignore[union-attr]
            except RuntimeError:  # the loop closed under us: shutdown raced this call
                _scheduler.sweep(rt)
                return True
        if rt.finished:
            _scheduler.sweep(rt)
        return True

    def __repr__(self) -> str:
        return (
            f"<asyncbridge.Batcher {self._name} lane={self._lane.name!r} "
            f"max_size={self.max_size} max_delay={self.max_delay:g}>"
        )

    def _queue_here(self) -> BatchQueue[T]:
        lane = self._lane._state_here()
        with self._locks.setdefault(_getpid(), threading.Lock()):
            q = self._q
            if q.lane is lane:
                return q
            q = BatchQueue(lane, self._flush, self._max_size, self._max_delay, self._name)
            _scheduler.attach_queue(lane, q)
            self._q = q
            return q

    def _forget(self) -> None:
        with self._locks.setdefault(_getpid(), threading.Lock()):
            self._q = _NOWHERE
