"""What a burst of no-op jobs costs the whole process, and what a blocked loop costs callers.

Run: ``.venv/bin/python bench/loop_cost.py`` (``--smoke`` for a few-second run).

Two tables, every row measured in the same run, each a median over ``--repeat`` fresh bridges:

* end to end: a burst of N no-op coroutines handed off back to back, from the first hand-off
  until the last job has finished. ``process CPU per job`` is this process's CPU time
  (``time.process_time``) over that span divided by N; ``loop CPU per job`` is the loop thread's
  own CPU time (its ``pthread_getcpuclockid`` clock) over the same span. The naive shape is
  ``loop.call_soon_threadsafe(loop.create_task, coro)`` on a plain loop in a thread, counting its
  jobs in a done callback as asyncbridge does.
* blocked loop: the loop is busy in a callback that waits on an event (its own work, not the
  GIL), and N calls hand work to it with the core's back-off as it is. ``per call`` is the
  caller's mean wall time per call, against the floor of creating the coroutines and keeping
  them alive in a list. A loop that never pulls must not make callers sleep for it.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextvars
import gc
import statistics
import sys
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any

from _common import counting_back_offs, machine, park_loop, print_table, target_line, wait_for

import asyncbridge


async def _noop() -> None:
    return None


def _thread_cpu(thread: threading.Thread) -> Callable[[], float]:
    assert thread.ident is not None
    clock = time.pthread_getcpuclockid(thread.ident)
    return lambda: time.clock_gettime(clock)


def asyncbridge_burst_cpu(n: int) -> tuple[float, float]:
    bridge = asyncbridge.Bridge(max_pending=n + 10, max_concurrency=None)
    bridge.start()
    loop_thread = bridge._rt.thread
    assert loop_thread is not None
    loop_cpu = _thread_cpu(loop_thread)
    coros = [_noop() for _ in range(n)]
    gc.collect()
    run_soon = bridge.run_soon
    cpu0, loop0 = time.process_time(), loop_cpu()
    for coro in coros:
        run_soon(coro)
    wait_for(lambda: bridge.stats().completed == n, 60, "the burst to finish")
    cpu, loop = time.process_time() - cpu0, loop_cpu() - loop0
    report = bridge.shutdown(5, log=False)
    assert report.stats.completed == n, report
    return cpu / n * 1e6, loop / n * 1e6


def naive_burst_cpu(n: int) -> tuple[float, float]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    wait_for(loop.is_running, 10, "the naive loop to start")
    loop_cpu = _thread_cpu(thread)
    done = [0]
    tasks: set[asyncio.Task[Any]] = set()

    def finished(task: asyncio.Task[Any]) -> None:
        tasks.discard(task)
        done[0] += 1

    def start(coro: Coroutine[Any, Any, Any]) -> None:
        task = loop.create_task(coro)
        tasks.add(task)
        task.add_done_callback(finished)

    coros = [_noop() for _ in range(n)]
    gc.collect()
    call = loop.call_soon_threadsafe
    cpu0, loop0 = time.process_time(), loop_cpu()
    for coro in coros:
        call(start, coro)
    wait_for(lambda: done[0] == n, 60, "the naive burst to finish")
    cpu, spent = time.process_time() - cpu0, loop_cpu() - loop0
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)
    loop.close()
    return cpu / n * 1e6, spent / n * 1e6


def _floor(n: int, *, collect: bool = True) -> float:
    gc.collect()
    if not collect:
        gc.disable()
    try:
        start = time.perf_counter()
        kept = [_noop() for _ in range(n)]
        elapsed = time.perf_counter() - start
    finally:
        gc.enable()
    for coro in kept:
        coro.close()
    return elapsed / n * 1e6


def _bare_keep(n: int, *, collect: bool = True) -> float:
    """The least any hand-off that keeps its work can do: each coroutine kept with a copy of the
    caller's context (as ``call_soon_threadsafe`` copies it too) in a deque; nothing else."""
    coros = [_noop() for _ in range(n)]
    kept: collections.deque[tuple[Any, contextvars.Context, None]] = collections.deque()
    copy_context = contextvars.copy_context
    gc.collect()
    if not collect:
        gc.disable()
    try:
        start = time.perf_counter()
        for coro in coros:
            kept.append((coro, copy_context(), None))
        elapsed = time.perf_counter() - start
    finally:
        gc.enable()
    for coro in coros:
        coro.close()
    return elapsed / n * 1e6 + _floor(n, collect=collect)


def _blocked_burst(n: int, *, collect: bool = True, timed: bool = False) -> tuple[float, int]:
    """Wall time per call (creating the coroutine included) and back-offs, for a blocked loop.

    Untimed, the figure is the burst's elapsed time over ``n`` (the mean). ``timed`` reads the
    clock around every call and gives the median instead; its two clock reads per call are
    not in the floor, so the mean comes from an untimed burst.
    """
    bridge = asyncbridge.Bridge(max_pending=n + 10, stall_warning=None)
    release = park_loop(bridge.get_loop())
    counting = counting_back_offs()
    slept = counting.__enter__()
    try:
        coros = [_noop() for _ in range(n)]
        gc.collect()
        if not collect:
            gc.disable()
        run_soon = bridge.run_soon
        clock = time.perf_counter_ns
        times = []
        start = clock()
        if timed:
            for coro in coros:
                before = clock()
                run_soon(coro)
                times.append(clock() - before)
        else:
            for coro in coros:
                run_soon(coro)
        elapsed = clock() - start
    finally:
        gc.enable()
        counting.__exit__(None, None, None)
        release()
    # Creating the coroutines is part of the floor, so it is part of this row too.
    create = _floor(n, collect=collect)
    report = bridge.shutdown(10, log=False)
    assert report.stats.completed == n, report
    per_call = statistics.median(times) / 1e3 if timed else elapsed / n / 1e3
    return per_call + create, slept[0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--burst", type=int, default=50_000, help="jobs per burst")
    parser.add_argument("--repeat", type=int, default=5, help="fresh runs per row (median)")
    parser.add_argument("--smoke", action="store_true", help="a quick run that checks the rows")
    args = parser.parse_args(argv)
    n, repeat = (2_000, 1) if args.smoke else (args.burst, args.repeat)
    print(f"# loop_cost: {machine()}; burst {n}, median of {repeat}")

    ours = [asyncbridge_burst_cpu(n) for _ in range(repeat)]
    naive = [naive_burst_cpu(n) for _ in range(repeat)]
    ours_cpu = statistics.median(c for c, _ in ours)
    ours_loop = statistics.median(lp for _, lp in ours)
    naive_cpu = statistics.median(c for c, _ in naive)
    naive_loop = statistics.median(lp for _, lp in naive)
    print_table(
        "End to end: CPU per no-op job, first hand-off to last job done",
        ["hand-off", "process CPU per job us", "loop CPU per job us", "naive / this (process)"],
        [
            ["asyncbridge run_soon", ours_cpu, ours_loop, naive_cpu / ours_cpu],
            ["call_soon_threadsafe(create_task)", naive_cpu, naive_loop, 1.0],
        ],
    )

    rows: list[list[object]] = []
    ratios = {}
    bounds = {}
    for collect in (True, False):
        floor = statistics.median(_floor(n, collect=collect) for _ in range(repeat))
        runs = [_blocked_burst(n, collect=collect) for _ in range(repeat)]
        mean = statistics.median(r[0] for r in runs)
        p50 = statistics.median(
            _blocked_burst(n, collect=collect, timed=True)[0] for _ in range(repeat)
        )
        slept = max(r[1] for r in runs)
        label = "collector on" if collect else "collector off"
        bare = statistics.median(_bare_keep(n, collect=collect) for _ in range(repeat))
        rows.append([f"floor ({label})", floor, floor, 1.0, "-"])
        rows.append(
            [f"lower bound: keep (coro, copy_context()) ({label})", bare, "-", bare / floor, "-"]
        )
        rows.append([f"run_soon, loop blocked ({label})", mean, p50, mean / floor, slept])
        ratios[collect] = mean / floor
        bounds[collect] = bare / floor
    print_table(
        "A burst against a loop blocked by its own work (back-off as it is)",
        ["row", "mean per call us", "p50 per call us", "mean / floor", "back-offs"],
        rows,
    )
    print(
        "(each call creates its coroutine too; the collector's passes over the growing inbox "
        "are the gap between the two halves, paid by any hand-off that keeps its work alive)"
    )
    print()
    target_line(
        "end to end: naive / asyncbridge process CPU per job",
        naive_cpu / ours_cpu,
        ">=",
        3.0,
        f"{ours_cpu:.2f} vs {naive_cpu:.2f} us",
    )
    target_line("end to end: asyncbridge loop CPU per job, us", ours_loop, "<=", 6.0, "loop share")
    target_line(
        "blocked loop: run_soon per call / floor, collector off",
        ratios[False],
        "<=",
        3.0,
        f"collector on: {ratios[True]:.2f}x; the lower bound of any hand-off that keeps each "
        f"coroutine with its context: {bounds[False]:.2f}x off, {bounds[True]:.2f}x on",
    )
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
