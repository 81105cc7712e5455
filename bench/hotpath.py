"""Where the caller's time goes inside ``run_soon``, with the loop parked (timeit, one thread).

Run: ``.venv/bin/python bench/hotpath.py`` (``--smoke`` for a quick run).

Each line is the best of several ``timeit`` repeats of one statement, in ns per call. The
prototype is a subclass that changes only ``run_soon``'s fast path: it shows what a change to the
core would buy, measured in the same run as the real thing.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextvars
import mmap
import os
import sys
import threading
import timeit
from collections.abc import Callable, Coroutine
from types import CoroutineType
from typing import Any

from _common import machine, print_table, target_line

import asyncbridge
from asyncbridge._bridge import _copy_context

# The core's fast path (since 9f14ff6) tests a MADV_WIPEONFORK page instead of calling
# os.getpid(); this page is the same mechanism, timed on its own below.
_PAGE = mmap.mmap(-1, mmap.PAGESIZE)
_WIPE = getattr(mmap, "MADV_WIPEONFORK", None)
if _WIPE is not None:
    _PAGE.madvise(_WIPE)
_PAGE[0] = 1


class FoldedChecksBridge(asyncbridge.Bridge):
    """Prototype: one test for every rare case (fork, wrong type, closed, full) on the fast path.

    ``closed`` is folded into the capacity test (limit 0 once closed); anything unusual falls
    through to the real ``run_soon``, which sorts it out.
    """

    def run_soon(self, coro: Coroutine[Any, Any, Any], /) -> bool:
        rt = self._rt
        if (
            not rt.here[0]
            or type(coro) is not CoroutineType
            or len(rt.inbox) + rt.running >= (0 if rt.closed else self._max_pending)
        ):
            return super().run_soon(coro)
        rt.inbox.append((coro, _copy_context(), None))
        if not rt.scheduled:
            rt.scheduled = True
            try:
                rt.loop.call_soon_threadsafe(self._pull, rt)  # type: ignore[union-attr]
            except RuntimeError:
                self._sweep(rt)
                return True
        if rt.finished:
            self._sweep(rt)
        return True


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


def _park(loop: asyncio.AbstractEventLoop) -> Callable[[], None]:
    parked, release = threading.Event(), threading.Event()

    def hold() -> None:
        parked.set()
        release.wait(120)

    loop.call_soon_threadsafe(hold)
    if not parked.wait(10):
        raise TimeoutError("the loop did not park")
    return release.set


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
        releases = [_park(b.get_loop()) for b in bridges.values()]
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
