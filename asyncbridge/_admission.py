"""Room in the backlog: waiting for it, refusing work (counted and named), and the back-off."""

from __future__ import annotations

import asyncio
import os
import selectors
import sys
import time
from collections.abc import Coroutine
from typing import Any

from ._errors import BacklogFull, BridgeClosed
from ._inputs import coroutine_name
from ._log import call_hook, close_quietly
from ._runtime import LaneState, Runtime

__all__ = ["back_off", "drop", "is_starved", "make_room", "make_room_for_item", "refuse"]

_monotonic = time.monotonic
_clock_gettime = time.clock_gettime
_thread_cpu_clock = getattr(time, "pthread_getcpuclockid", None)

# Back-off for a starved loop (the hot path's half of it lives in Bridge.run_soon). Later callers
# only append while a wake-up is pending, so none of them releases the GIL; with CPU-bound request
# threads the loop thread then gets it only on the interpreter's 5 ms forced switches, shared with
# every other thread (a publish delay of hundreds of ms at p99 with 8 such threads). A caller that
# finds a backlog and the wake-up overdue sleeps briefly, which hands the GIL over.
#
# Sleeping helps a loop that waits for the GIL (or computes), not one that waits on something
# else inside a callback or coroutine (a lock, time.sleep, blocking I/O): that loop does not
# pull, however long callers sleep. So the first back-off for a wake-up is a look at the loop
# thread (_waits_on_its_own), which sleeps one back-off while it watches the thread; if the
# loop is blocked that way, callers stop paying for that wake-up at once (one sleep in all,
# where the bound of GIVE_UP alone cost a burst of 50,000 calls about 100 ms, and a look after
# 16 back-offs still 8 ms). A starved loop keeps its back-offs, with a second look after
# LOOK_AGAIN of them (the loop may have started blocking meanwhile), up to GIVE_UP, which is
# treated as blocked whatever the loop does. bench/publish_delay.py and bench/loop_cost.py
# measure both sides.
STARVED = 0.002
GIVE_UP = 0.1
BACKOFF = 0.0005
LOOK_AGAIN = 16
_BLOCKED = 1 << 30  # the back-off count of a wake-up found blocked


def is_starved(lane: LaneState) -> bool:
    """Read the clock: is the pending wake-up overdue, but not so late that the loop is blocked?"""
    lane.starved = starved = (
        lane.backoffs < _BLOCKED and STARVED < _monotonic() - lane.scheduled_at < GIVE_UP
    )
    return starved


def back_off(lane: LaneState) -> None:
    """Sleep briefly so that a starved loop thread gets the GIL; never on the loop itself."""
    rt = lane.runtime
    if rt.in_loop_thread():  # the loop is the one we wait for
        return
    if lane.backoffs >= _BLOCKED:  # a finding of "starved" that outlived the look
        lane.starved = False
        return
    lane.backoffs += 1
    if lane.backoffs == 1 or lane.backoffs == LOOK_AGAIN:
        if _waits_on_its_own(rt):  # (the look is this back-off's sleep)
            # Blocked, not starved: no more back-offs for this wake-up (the pull resets it).
            lane.backoffs = _BLOCKED
            lane.starved = False
        return
    time.sleep(BACKOFF)


# Where a loop thread stands when it is idle or between callbacks: asyncio's own loop code, the
# selectors module, and asyncbridge's (starting jobs, counting them). Whole paths: an app's own
# events.py is not asyncio's.
_LOOP_PLACES = (
    os.path.dirname(asyncio.__file__) + os.sep,
    selectors.__file__,
    os.path.dirname(__file__) + os.sep,
)


def _waits_on_its_own(rt: Runtime) -> bool:
    """Is the loop thread blocked by its own work in a way that callers' sleeping cannot help?

    Sleeps one back-off in every case: the look is a back-off too. A loop that waits for the
    GIL stands in asyncio's own code (its select, or between callbacks); one that computes in a
    coroutine gains from the GIL too, and its CPU clock moves while this caller sleeps. A loop
    inside a callback or coroutine whose CPU clock stands still waits on something else (a lock,
    a sleep, blocking I/O): no back-off can help it.
    """
    thread = rt.thread
    ident = None if thread is None else thread.ident
    frame = None if ident is None else sys._current_frames().get(ident)
    in_loop_code = frame is None or frame.f_code.co_filename.startswith(_LOOP_PLACES)
    del frame
    clock = None
    if not in_loop_code and _thread_cpu_clock is not None:
        try:
            clock = _thread_cpu_clock(ident)
            before = _clock_gettime(clock)
        except OSError:  # no per-thread CPU clock here: the frame alone decides
            clock = None
    time.sleep(BACKOFF)  # the back-off, and the time the clock is watched
    if in_loop_code:
        return False
    return clock is None or _clock_gettime(clock) - before < BACKOFF / 10


def make_room(lane: LaneState, coro: Coroutine[Any, Any, Any], *, raise_full: bool = False) -> bool:
    """The lane's backlog is at ``max_pending``: wait for room (``on_full="block"``) or refuse.

    Returns:
        True when room was found (``"block"`` only); False when ``coro`` was dropped.

    Raises:
        BacklogFull: ``raise_full`` (``submit``) or ``on_full="raise"``.
        BridgeClosed: ``raise_full`` and shutdown began while waiting.
    """
    return _room_or_refuse(lane, coroutine_name(coro), coro, raise_full)


def make_room_for_item(lane: LaneState, name: str) -> bool:
    """As :func:`make_room`, for one batcher item (named after the batcher's flush function).

    Raises:
        BacklogFull: The lane's ``on_full="raise"``.
    """
    return _room_or_refuse(lane, name, None, False)


def _room_or_refuse(
    lane: LaneState, name: str, coro: Coroutine[Any, Any, Any] | None, raise_full: bool
) -> bool:
    rt = lane.runtime
    options = lane.options
    if options.on_full == "block" and not rt.in_loop_thread():
        deadline = time.monotonic() + options.block_timeout
        with lane.room:
            lane.room_waiters += 1
            try:
                # lane.options, not options: a configure() meanwhile may have raised the bound.
                while lane.backlog() + lane.running >= lane.options.max_pending and not rt.closed:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    # Short slices: a wake-up sent just before we started waiting is not lost
                    # for longer than one slice.
                    lane.room.wait(min(remaining, 0.05))
                else:
                    if not rt.closed:
                        return True
            except BaseException:
                # Interrupted while waiting (KeyboardInterrupt, a signal handler's SystemExit):
                # the work was not accepted; refuse it properly before the error goes on.
                refuse(lane, name, "full", warn=False, coro=coro)
                raise
            finally:
                lane.room_waiters -= 1
        if rt.closed:  # shutdown began while we waited
            if raise_full:
                refuse(lane, name, "closed", warn=False, coro=coro)
                raise BridgeClosed("the bridge was shut down while waiting for room")
            refuse(lane, name, "closed", coro=coro)
            return False
    if raise_full or options.on_full == "raise":
        refuse(lane, name, "full", warn=False, coro=coro)
        where = "" if lane is rt else f" of lane {lane.name!r}"
        raise BacklogFull(
            f"asyncbridge backlog{where} is full ({options.max_pending} pending); raise "
            "max_pending, lower the rate, or use on_full='drop' or 'block'"
        )
    refuse(lane, name, "full", coro=coro)
    return False


def drop(
    lane: LaneState, coro: Coroutine[Any, Any, Any], reason: str, *, warn: bool = True
) -> None:
    """Refuse ``coro``: close it, count it by reason, warn (summarised), call ``on_drop``."""
    refuse(lane, coroutine_name(coro), reason, warn=warn, coro=coro)


def refuse(
    lane: LaneState,
    name: str,
    reason: str,
    *,
    warn: bool = True,
    coro: Coroutine[Any, Any, Any] | None = None,
) -> None:
    """Refuse a coroutine or a batcher's item named ``name``: count it by reason, warn, hook.

    The first refusal of each reason is logged in full, then one summary per ``log_interval``
    (see ``_failures``), as failures are.
    """
    if coro is not None:
        close_quietly(coro)
    rt = lane.runtime
    # No lock: a signal handler may drop work while the frame it interrupted is dropping too.
    # `x += 1` on an attribute has no point between its read and its write where CPython runs
    # a signal handler or switches threads (no call in between), unlike setattr(getattr()+1).
    # Drops are outside the accounting sum, so snapshots need no lock for them either.
    if reason == "full":
        lane.dropped_full += 1
        total = lane.dropped_full
    else:
        lane.dropped_closed += 1
        total = lane.dropped_closed
    if warn:
        if reason == "full":
            why = f"the backlog is full ({lane.options.max_pending} pending)"
        elif rt.dead:
            why = "the bridge loop thread died (see the error logged when it did)"
        else:
            why = "the bridge is shut down"
        rt.summaries.drop(name, reason, why, total, lane=lane.name)
    hook = lane.options.on_drop
    if hook is not None:
        call_hook(hook, "on_drop", name, reason)
