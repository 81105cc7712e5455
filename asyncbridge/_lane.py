"""Lanes: a named share of a bridge, with its own backlog, concurrency limit and counters.

A destination that hangs holds every concurrency slot it is given, and everything queued behind
it waits and is then dropped. Give each destination a lane (``asyncbridge.lane("push")``) and a
hanging one fills its own backlog only. Every lane of a process runs on the same loop, drains
under the same shutdown deadline and is counted in the same ``stats()``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import os
import threading
import time
import weakref
from collections.abc import Callable, Coroutine
from types import CoroutineType
from typing import TYPE_CHECKING, Any, TypeVar

from . import _admission, _scheduler
from ._blocking import run_and_wait
from ._config import Options
from ._errors import AsyncBridgeError, BridgeClosed
from ._future import BridgeFuture
from ._inputs import not_a_coroutine
from ._log import close_quietly
from ._runtime import DEFAULT_LANE, NOT_STARTED, LaneState
from ._stats import Stats

if TYPE_CHECKING:
    from ._bridge import Bridge

__all__ = ["LANE_OPTIONS", "Lane"]

T = TypeVar("T")

#: The options a lane may set; every other option is the bridge's.
LANE_OPTIONS = frozenset(
    {"max_pending", "max_concurrency", "on_full", "block_timeout", "task_timeout"}
)

_copy_context = contextvars.copy_context
_getpid = os.getpid
_monotonic = time.monotonic

# As in Bridge.run_soon (see _bridge and _admission): the back-off for a starved loop starts past
# this backlog, and reads the clock on every 8th hand-off.
_BACKLOG_BEFORE_BACKOFF = 8
_LOOK_EVERY = 7


def lane_options(name: str, options: dict[str, Any]) -> dict[str, Any]:
    """Check a lane's options (names and values); return them validated.

    Raises:
        TypeError: An option a lane cannot set, or a value of the wrong type.
        ValueError: A value out of range, or a lane name that is not a non-empty string.
    """
    if not isinstance(name, str):
        raise TypeError(f"a lane's name must be a str, got {type(name).__name__} {name!r}")
    if not name or not name.isprintable():
        raise ValueError(f"a lane's name must be non-empty and printable, got {name!r}")
    unknown = sorted(set(options) - LANE_OPTIONS)
    if unknown:
        raise TypeError(
            f"a lane cannot set {', '.join(map(repr, unknown))}; lane options are "
            f"{', '.join(sorted(LANE_OPTIONS))} (the others are the bridge's: configure() them)"
        )
    checked = Options().updated(options)
    return {key: getattr(checked, key) for key in options}


class Lane:
    """This process's lane of one name: its own admission, concurrency limit and counters.

    Get one with :func:`asyncbridge.lane` (or :meth:`Bridge.lane`). Options a lane does not set
    are the bridge's, and follow its ``configure()``. Coroutines handed to a lane run on the
    bridge's loop, in a copy of the caller's context, and are drained by the same shutdown. A lane
    follows the process across ``fork``: the child's first use makes its own, with the same
    options, and what the parent had queued stays the parent's.
    """

    __slots__ = ("__weakref__", "_bridge", "_explicit", "_locks", "_name", "_rebound", "_st")

    def __init__(self, bridge: Bridge, name: str, options: dict[str, Any]) -> None:
        self._bridge = bridge
        self._name = name
        self._explicit = lane_options(name, options)
        # This process's state of the lane once used here; a runtime's own (never published)
        # placeholder before, so that the first use takes the slow path.
        self._st: LaneState = NOT_STARTED
        # One lock per process, made on first use there: a lock inherited through fork may be
        # held by a parent thread that does not exist in the child.
        self._locks: dict[int, threading.Lock] = {}
        # Called when the lane moves to another bridge (set_default_bridge): its batchers.
        self._rebound: list[weakref.WeakMethod[Callable[[], object]]] = []

    @property
    def name(self) -> str:
        """The lane's name."""
        return self._name

    @property
    def options(self) -> Options:
        """The options in force for this lane: its own, the bridge's for the rest."""
        return self._bridge.options.updated(self._explicit)

    @property
    def explicit_options(self) -> dict[str, Any]:
        """The options this lane sets itself (the others are the bridge's)."""
        return dict(self._explicit)

    # -- the hand-off --------------------------------------------------------------------------

    def run_soon(self, coro: Coroutine[Any, Any, Any], /) -> bool:
        """Schedule ``coro`` in this lane and return at once.

        As :meth:`Bridge.run_soon`, with this lane's backlog, policy and concurrency limit.

        Returns:
            True when accepted; False when dropped (the lane's backlog full under
            ``on_full="drop"`` or ``"block"``, or the bridge shut down).

        Raises:
            TypeError: ``coro`` is not a coroutine object.
            BacklogFull: The lane's backlog is full and ``on_full="raise"``.
        """
        if type(coro) is not CoroutineType and not asyncio.iscoroutine(coro):
            raise not_a_coroutine("Lane.run_soon", coro)
        st = self._st
        rt = st.runtime
        if not rt.here[0]:  # not used in this process yet, or inherited through fork
            st = self._state_for(coro)
            rt = st.runtime
        if rt.closed:
            _admission.drop(st, coro, "closed")
            return False
        backlog = len(st.inbox)
        if backlog + st.running >= st.options.max_pending and not _admission.make_room(st, coro):
            return False
        st.inbox.append((coro, _copy_context(), None))
        _wake(st, backlog)
        return True

    def submit(self, coro: Coroutine[Any, Any, T], /) -> concurrent.futures.Future[T]:
        """Schedule ``coro`` in this lane and return a future for its result.

        As :meth:`Bridge.submit`, with this lane's backlog and concurrency limit.

        Raises:
            TypeError: ``coro`` is not a coroutine object.
            BacklogFull: The lane's backlog is full.
            BridgeClosed: The bridge was shut down in this process.
        """
        if not asyncio.iscoroutine(coro):
            raise not_a_coroutine("Lane.submit", coro)
        st = self._st
        rt = st.runtime
        if not rt.here[0]:
            st = self._state_for(coro)
            rt = st.runtime
        if rt.closed:
            _admission.drop(st, coro, "closed", warn=False)
            raise BridgeClosed("the bridge was shut down in this process and accepts no more work")
        backlog = len(st.inbox)
        if backlog + st.running >= st.options.max_pending:
            _admission.make_room(st, coro, raise_full=True)  # returns only once there is room
        future = BridgeFuture[T](rt.loop)  # type: ignore[arg-type]
        st.inbox.append((coro, _copy_context(), future))
        _wake(st, backlog)
        return future

    def run(self, coro: Coroutine[Any, Any, T], /, *, timeout: float | None = None) -> T:
        """Run ``coro`` in this lane and block until it finishes; as :meth:`Bridge.run`.

        Raises:
            TimeoutError: The timeout passed; the coroutine has been told to cancel.
            AsyncBridgeError: Called from the bridge loop's thread or inside a running loop.
            BaseException: Whatever the coroutine raised.
        """
        bridge = self._bridge
        return run_and_wait(
            "Lane.run",
            coro,
            timeout,
            submit=self.submit,
            bridge_loop=bridge._rt.loop,
            on_loop_thread=bridge.in_loop_thread(),
        )

    def stats(self) -> Stats:
        """A consistent snapshot of this lane's accounting in this process; never starts a loop."""
        rt = self._bridge._rt
        if rt.pid != _getpid():
            return Stats(pid=_getpid())
        st = rt.lanes.get(self._name)
        if st is None:
            return Stats(pid=rt.pid, loop_running=rt.snapshot().loop_running)
        return rt.snapshot().lanes[self._name]

    def configure(self, **options: Any) -> None:
        """Change this lane's own options; they take effect at once in this process.

        Raises:
            TypeError: An option a lane cannot set, or a value of the wrong type.
            ValueError: A value out of range.
            AsyncBridgeError: The lane is ``"default"``, whose options are the bridge's.
        """
        if self._name == DEFAULT_LANE:
            raise AsyncBridgeError(
                "the default lane's options are the bridge's: use asyncbridge.configure()"
            )
        self._explicit = {**self._explicit, **lane_options(self._name, options)}
        rt = self._bridge._rt
        st = rt.lanes.get(self._name) if rt.pid == _getpid() else None
        if st is not None:  # the lane is in use here: change it in place, acting at once
            st.explicit = self._explicit
            _scheduler.apply_options(st, self._bridge.options)
            if not rt.finished:
                _scheduler.options_changed([st])

    def __repr__(self) -> str:
        return f"<asyncbridge.Lane {self._name!r} {self._explicit}>"

    # -- inside ----------------------------------------------------------------------------------

    def _state_for(self, coro: Coroutine[Any, Any, Any]) -> LaneState:
        """This process's state, made on first use; if that fails, close ``coro`` and re-raise."""
        try:
            return self._state_here()
        except BaseException:
            close_quietly(coro)
            raise

    def _state_here(self) -> LaneState:
        """This process's state of the lane, starting the loop and making the state if need be."""
        rt = self._bridge._runtime_here()
        if self._name == DEFAULT_LANE:
            self._st = rt
            return rt
        with self._locks.setdefault(_getpid(), threading.Lock()):
            st = self._st
            if st.runtime is rt:
                return st
            st = _scheduler.lane_state(rt, self._name, self._explicit)
            self._st = st
            return st

    def _rebind(self, bridge: Bridge) -> None:
        """Move the lane to ``bridge`` (the new default bridge), with the same options."""
        with self._locks.setdefault(_getpid(), threading.Lock()):
            self._bridge = bridge
            self._st = NOT_STARTED
            alive = [ref for ref in self._rebound if ref() is not None]
            self._rebound = alive
        for ref in alive:
            callback = ref()
            if callback is not None:
                callback()

    def _on_rebind(self, callback: Callable[[], object]) -> None:
        """Call the bound method ``callback`` when the lane moves to another bridge."""
        with self._locks.setdefault(_getpid(), threading.Lock()):
            self._rebound.append(weakref.WeakMethod(callback))


def _wake(st: LaneState, backlog: int) -> None:
    """After an append to a lane's inbox: queue the loop's wake-up, or back off if it is overdue.

    A lane at its concurrency limit needs neither: what waits starts when a slot frees, since
    every job's end gives its slot back before it looks at the inbox, and this append came
    before our read of ``busy``. (A lane whose destination hangs sits at its limit: waking the
    loop for each hand-off, and backing off when the loop is slow to take the wake-up, would
    cost the requests for nothing.)
    """
    rt = st.runtime
    limit = st.options.max_concurrency
    if limit is not None and st.busy >= limit:
        pass
    elif not st.scheduled:
        st.scheduled = True
        st.scheduled_at = _monotonic()
        st.starved = False  # a finding about an earlier wake-up is stale
        try:
            rt.loop.call_soon_threadsafe(_scheduler.pull, st)  # type: ignore[union-attr]
        except RuntimeError:  # the loop closed under us: shutdown raced this call
            _scheduler.sweep(rt)
            return
    elif backlog >= _BACKLOG_BEFORE_BACKOFF and (
        st.starved if backlog & _LOOK_EVERY else _admission.is_starved(st)
    ):
        _admission.back_off(st)
    if rt.finished:
        _scheduler.sweep(rt)
