"""Where the caller's time goes inside ``run_soon``, with the loop parked (timeit, one thread).

Run: ``.venv/bin/python bench/hotpath.py`` (``--smoke`` for a quick run).

Each line is the best of several ``timeit`` repeats of one statement, in ns per call. The
prototype is a subclass that changes only ``run_soon``'s fast path: it shows what a change to the
core would buy, measured in the same run as the real thing.

With the loop parked the inbox only grows, which the core's back-off (c2c8399) takes for a starved
loop: it would sleep 0.5 ms per call. The timings therefore run with the back-off's backlog limit
out of reach (``without_back_off``), which leaves exactly the path of a loop that keeps up: one
false comparison. What the back-off's test costs once the backlog passes the limit is printed
separately.
"""

from __future__ import annotations

import argparse
import collections
import contextvars
import mmap
import os
import sys
import time
import timeit
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from types import CoroutineType
from typing import Any

from _common import machine, park_loop, percentile, print_table, target_line

import asyncbridge
from asyncbridge import _admission, _bridge
from asyncbridge._admission import back_off as _back_off
from asyncbridge._admission import is_starved as _is_starved
from asyncbridge._bridge import _LOOK_EVERY, _copy_context, _monotonic
from asyncbridge._runtime import Runtime as _Runtime
from asyncbridge._scheduler import pull, sweep

# The core's fast path (since 9f14ff6) tests a MADV_WIPEONFORK page instead of calling
# os.getpid(); this page is the same mechanism, timed on its own below.
_PAGE = mmap.mmap(-1, mmap.PAGESIZE)
_WIPE = getattr(mmap, "MADV_WIPEONFORK", None)
if _WIPE is not None:
    _PAGE.madvise(_WIPE)
_PAGE[0] = 1


# The prototype's copy of the core's limit: a plain global, as in the core (one LOAD_GLOBAL).
_BACKLOG_BEFORE_BACKOFF = _bridge._BACKLOG_BEFORE_BACKOFF


class FoldedChecksBridge(asyncbridge.Bridge):
    """Prototype: one test for every rare case (fork, wrong type, closed, full) on the fast path.

    ``closed`` is folded into the capacity test (limit 0 once closed); anything unusual falls
    through to the real ``run_soon``, which sorts it out. The rest is the core's body: the backlog
    read once, the wake-up's time noted, the back-off test in the ``elif``.
    """

    def run_soon(self, coro: Coroutine[Any, Any, Any], /) -> bool:
        rt = self._rt
        backlog = len(rt.inbox)
        if (
            not rt.here[0]
            or type(coro) is not CoroutineType
            or backlog + rt.running >= (0 if rt.closed else self._max_pending)
        ):
            return super().run_soon(coro)
        rt.inbox.append((coro, _copy_context(), None))
        if not rt.scheduled:
            rt.scheduled = True
            rt.scheduled_at = _monotonic()
            rt.starved = False  # a finding about an earlier wake-up is stale
            try:
                rt.loop.call_soon_threadsafe(pull, rt)  # type: ignore[union-attr]
            except RuntimeError:
                sweep(rt)
                return True
        elif backlog >= _BACKLOG_BEFORE_BACKOFF and (
            rt.starved if backlog & _LOOK_EVERY else _is_starved(rt)
        ):
            _back_off(rt)
        if rt.finished:
            sweep(rt)
        return True


@contextmanager
def without_back_off() -> Iterator[None]:
    """Keep the core's back-off from firing while the loop is parked; restore it after.

    A parked loop looks starved: once 8 jobs wait and the wake-up is 2 ms old, every call would
    sleep 0.5 ms and this benchmark would time the sleep. A backlog limit no inbox reaches leaves
    the path of a loop that keeps up: the one comparison ``backlog >= limit``, false.
    """
    global _BACKLOG_BEFORE_BACKOFF
    saved = _bridge._BACKLOG_BEFORE_BACKOFF
    _bridge._BACKLOG_BEFORE_BACKOFF = _BACKLOG_BEFORE_BACKOFF = sys.maxsize
    try:
        yield
    finally:
        _bridge._BACKLOG_BEFORE_BACKOFF = _BACKLOG_BEFORE_BACKOFF = saved


_inbox: collections.deque[tuple[object, contextvars.Context, None]] = collections.deque()
_scheduled = [True]


def minimal_hand_off(coro: Coroutine[Any, Any, Any]) -> bool:
    """Lower bound for any pure-Python hand-off of this design: append, check the wake-up flag.

    No fork check, no type check, no admission control, no shutdown race: what is left when
    every guarantee is removed.
    """
    _inbox.append((coro, _copy_context(), None))
    if not _scheduled[0]:
        _scheduled[0] = True
    return True


async def job() -> None:
    """A no-op coroutine."""


def _back_off_test_ns(n: int, repeat: int, backlog: int) -> float:
    """ns per evaluation of the core's back-off test with ``backlog`` past the limit (no sleep).

    The wake-up is fresh, so the test is false: the path of every call in a burst.
    """
    rt = _Runtime(os.getpid())
    rt.scheduled_at = _monotonic() + 3600
    env = {
        "backlog": backlog,
        "limit": _bridge._BACKLOG_BEFORE_BACKOFF,
        "rt": rt,
        "mask": _LOOK_EVERY,
        "is_starved": _is_starved,
    }
    stmt = "backlog >= limit and (rt.starved if backlog & mask else is_starved(rt))"
    return min(timeit.Timer(stmt, globals=env).repeat(repeat, n)) / n * 1e9


def _back_off_sleep_us(count: int) -> list[float]:
    """What the back-off's ``time.sleep(_BACKOFF)`` really takes here, in us, ``count`` times."""
    out = []
    for _ in range(count):
        t0 = time.perf_counter_ns()
        time.sleep(_admission.BACKOFF)
        out.append((time.perf_counter_ns() - t0) / 1000)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="run_soon hot path, piece by piece")
    parser.add_argument("--number", type=int, default=100_000, help="calls per repeat")
    parser.add_argument("--repeat", type=int, default=7, help="repeats; the best is shown")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes")
    args = parser.parse_args(argv)
    if args.smoke:
        args.number, args.repeat = 2_000, 2
    n = args.number

    print("# run_soon hot path (loop parked; best of repeats, ns per call)")
    print(f"machine: {machine()}")
    statements = [
        ("floor: kept.append(job())", "kept.append(job())"),
        ("asyncbridge.run_soon(job())  (module function)", "asyncbridge.run_soon(job())"),
        ("bridge.run_soon(job())  (the method)", "bridge.run_soon(job())"),
        ("prototype FoldedChecksBridge.run_soon(job())", "folded.run_soon(job())"),
        ("lower bound: minimal_hand_off(job())", "minimal_hand_off(job())"),
        ("piece: os.getpid()", "getpid()"),
        ("piece: page[0]  (wipe-on-fork check)", "page[0]"),
        ("piece: copy_context()", "copy_context()"),
        ("piece: type(x) is CoroutineType", "type(scratch) is CoroutineType"),
        ("piece: len(rt.inbox) + rt.running >= 10", "len(rt.inbox) + rt.running >= 10"),
        ("piece: scratch.append((1, 2, None))", "scratch.append((1, 2, None))"),
    ]
    best: dict[str, float] = {label: float("inf") for label, _ in statements}
    # Fresh bridges every repeat, so that no row pays for a backlog grown by the rows before it.
    for _ in range(args.repeat):
        bridges = {
            "bridge": asyncbridge.Bridge(max_pending=4 * n),
            "folded": FoldedChecksBridge(max_pending=4 * n),
        }
        previous = asyncbridge.set_default_bridge(bridges["bridge"])
        releases = [park_loop(b.get_loop()) for b in bridges.values()]
        kept: list[Coroutine[Any, Any, None]] = []
        scratch: list[object] = []
        env: dict[str, Any] = {
            **bridges,
            "job": job,
            "kept": kept,
            "scratch": scratch,
            "asyncbridge": asyncbridge,
            "getpid": os.getpid,
            "page": _PAGE,
            "copy_context": contextvars.copy_context,
            "CoroutineType": CoroutineType,
            "rt": bridges["bridge"]._rt,
            "minimal_hand_off": minimal_hand_off,
        }
        try:
            with without_back_off():
                for label, stmt in statements:
                    elapsed = timeit.Timer(stmt, globals=env).timeit(n)
                    best[label] = min(best[label], elapsed / n * 1e9)
                    scratch.clear()
        finally:
            for release in releases:
                release()
            for b in bridges.values():
                b.shutdown(30)
            asyncbridge.set_default_bridge(previous)
            for coro in kept:
                coro.close()
            while _inbox:
                _inbox.popleft()[0].close()  # type: ignore[attr-defined]
    results = best
    floor = results["floor: kept.append(job())"]
    print_table(
        "run_soon hot path",
        ["statement", "ns per call", "/ floor"],
        [[label, ns, ns / floor] for label, ns in results.items()],
    )
    print(f"\nos.getpid() is a system call here: {results['piece: os.getpid()']:.0f} ns per call")
    limit = _bridge._BACKLOG_BEFORE_BACKOFF
    skip_ns = _back_off_test_ns(n, args.repeat, limit + 1)
    look_ns = _back_off_test_ns(n, args.repeat, 2 * (_LOOK_EVERY + 1))
    sleeps = _back_off_sleep_us(20 if args.smoke else 500)
    print(
        f"back-off test once the backlog reaches {limit}, the loop not starved: "
        f"{skip_ns:.0f} ns on 7 calls in 8 (comparisons and an attribute read), "
        f"{look_ns:.0f} ns on every 8th (it also reads the clock); "
        f"the back-off itself, time.sleep({_admission.BACKOFF:g}): "
        f"p50 {percentile(sleeps, 50):.0f} us, p99 {percentile(sleeps, 99):.0f} us"
    )
    print("\n### targets (ratios from this run)\n")
    target_line(
        "caller only: Bridge.run_soon / floor",
        results["bridge.run_soon(job())  (the method)"] / floor,
        "<=",
        3,
        "timeit, loop parked",
    )
    target_line(
        "caller only: prototype FoldedChecksBridge.run_soon / floor",
        results["prototype FoldedChecksBridge.run_soon(job())"] / floor,
        "<=",
        3,
        "timeit, loop parked",
    )
    target_line(
        "caller only: lower bound (no guarantees at all) / floor",
        results["lower bound: minimal_hand_off(job())"] / floor,
        "<=",
        3,
        "what any pure-Python hand-off of this shape costs",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
