"""Publish delay: from ``run_soon`` to the coroutine's first step, with request threads saturated.

Run: ``.venv/bin/python bench/publish_delay.py`` (``--smoke`` for a one-second run).

Request threads loop forever doing "request work" (pure-Python CPU, optionally followed by a
blocking-I/O-like sleep) and hand one coroutine off per request. The coroutine notes how long it
waited for its first step. The question: does the scheduler starve the loop thread under the GIL?
The same load is run against the naive loop-in-thread, against asyncbridge with its back-off
switched off (the core before c2c8399), and against the floor (a plain thread woken by a queue).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from queue import SimpleQueue
from typing import Any

from _common import (
    counting_back_offs,
    machine,
    percentile,
    print_table,
    target_line,
    without_back_off,
)

import asyncbridge
from asyncbridge import _admission, _bridge

_now = time.perf_counter_ns


async def first_step(sent: int, delays: list[int]) -> None:
    """Record how long this coroutine waited between its hand-off and its first step."""
    delays.append(_now() - sent)


def request_work(cpu_ms: float) -> int:
    """Pure-Python CPU work of about ``cpu_ms`` (calibrated loop; holds the GIL throughout)."""
    total = 0
    for i in range(int(cpu_ms * _ITERATIONS_PER_MS)):
        total += i * i % 7
    return total


_ITERATIONS_PER_MS = 1


def _calibrate() -> None:
    global _ITERATIONS_PER_MS
    n = 200_000
    t0 = time.perf_counter()
    total = 0
    for i in range(n):
        total += i * i % 7
    _ITERATIONS_PER_MS = max(1, int(n / ((time.perf_counter() - t0) * 1000)))


HandOff = Callable[[Coroutine[Any, Any, None]], object]


@contextmanager
def _asyncbridge() -> Iterator[HandOff]:
    bridge = asyncbridge.Bridge(max_pending=1_000_000)
    bridge.start()
    try:
        yield bridge.run_soon
    finally:
        bridge.shutdown(30)


@contextmanager
def _naive() -> Iterator[HandOff]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    def hand_off(coro: Coroutine[Any, Any, None]) -> None:
        loop.call_soon_threadsafe(loop.create_task, coro)

    try:
        yield hand_off
    finally:

        async def settle() -> None:
            others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            await asyncio.gather(*others)

        asyncio.run_coroutine_threadsafe(settle(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(30)
        loop.close()


@contextmanager
def _no_back_off() -> Iterator[HandOff]:
    with without_back_off(), _asyncbridge() as hand_off:
        yield hand_off


@contextmanager
def _plain_thread() -> Iterator[HandOff]:
    # The floor for any design with a background thread: one thread blocked in SimpleQueue.get()
    # steps each coroutine as soon as it holds the GIL. No event loop, no selector.
    queue: SimpleQueue[Coroutine[Any, Any, None] | None] = SimpleQueue()

    def consume() -> None:
        while (coro := queue.get()) is not None:
            try:
                coro.send(None)
            except StopIteration:
                pass

    thread = threading.Thread(target=consume, daemon=True)
    thread.start()
    try:
        yield queue.put
    finally:
        queue.put(None)
        thread.join(30)


ASYNCBRIDGE = "asyncbridge.run_soon (with back-off)"
NO_BACK_OFF = "asyncbridge without the back-off (before c2c8399)"
TARGETS = {
    ASYNCBRIDGE: _asyncbridge,
    "naive call_soon_threadsafe": _naive,
    NO_BACK_OFF: _no_back_off,
    "floor: plain thread woken by SimpleQueue": _plain_thread,
}


def run_load(
    target: str, threads: int, cpu_ms: float, io_ms: float, seconds: float
) -> tuple[list[int], int, int]:
    """Run the load; return the delays (ns), the requests served and the back-offs taken."""
    delays: list[int] = []
    stop = threading.Event()
    served = [0] * threads

    with counting_back_offs() as back_offs, TARGETS[target]() as hand_off:

        def worker(k: int) -> None:
            while not stop.is_set():
                request_work(cpu_ms)
                hand_off(first_step(_now(), delays))
                served[k] += 1
                if io_ms:
                    time.sleep(io_ms / 1000)

        pool = [threading.Thread(target=worker, args=(k,), daemon=True) for k in range(threads)]
        for t in pool:
            t.start()
        time.sleep(seconds)
        stop.set()
        for t in pool:
            t.join(30)
        deadline = time.monotonic() + 30
        while len(delays) < sum(served) and time.monotonic() < deadline:
            time.sleep(0.01)
    if len(delays) != sum(served):
        raise RuntimeError(f"{target}: {sum(served)} handed off but {len(delays)} ran")
    return delays, sum(served), back_offs[0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="publish delay under saturated request threads")
    parser.add_argument("--seconds", type=float, default=5.0, help="per row (5)")
    parser.add_argument("--threads", type=int, default=8, help="request threads (8)")
    parser.add_argument("--cpu-ms", type=float, default=1.0, help="CPU work per request (1 ms)")
    parser.add_argument(
        "--switch-interval-ms",
        type=float,
        default=None,
        help="sys.setswitchinterval for the run (the interpreter's default is 5 ms)",
    )
    parser.add_argument("--smoke", action="store_true", help="short rows")
    args = parser.parse_args(argv)
    if args.switch_interval_ms is not None:
        sys.setswitchinterval(args.switch_interval_ms / 1000)
    if args.smoke:
        args.seconds = 0.5
    _calibrate()
    print("# publish delay (run_soon until the coroutine's first step)")
    print(f"machine: {machine()}")
    print(
        f"{args.seconds:g} s per row; request work {args.cpu_ms:g} ms of pure-Python CPU; "
        f"sys.getswitchinterval() = {sys.getswitchinterval() * 1000:g} ms"
    )
    loads = [
        ("1 thread, paced (1 ms CPU + 1 ms sleep)", 1, 1.0),
        (f"{args.threads} threads, CPU only (saturated)", args.threads, 0.0),
        (f"{args.threads} threads, {args.cpu_ms:g} ms CPU + 1 ms sleep", args.threads, 1.0),
    ]
    print(
        f"back-off (asyncbridge._bridge): a caller that finds >= {_bridge._BACKLOG_BEFORE_BACKOFF} "
        f"jobs waiting and the wake-up pending > {_admission.STARVED * 1000:g} ms (and < "
        f"{_admission.GIVE_UP * 1000:g} ms: older means blocked) sleeps "
        f"{_admission.BACKOFF * 1000:g} ms"
    )
    rows: list[list[object]] = []
    saturated: dict[str, float] = {}
    for label, threads, io_ms in loads:
        for target in TARGETS:
            delays, served, back_offs = run_load(target, threads, args.cpu_ms, io_ms, args.seconds)
            p99 = percentile(delays, 99) / 1e6
            rows.append(
                [
                    label,
                    target,
                    served,
                    percentile(delays, 50) / 1e6,
                    p99,
                    max(delays) / 1e6,
                    back_offs,
                ]
            )
            if "saturated" in label:
                saturated[target] = p99
    print_table(
        "publish delay",
        ["load", "hand-off", "jobs", "p50 ms", "p99 ms", "max ms", "back-offs"],
        rows,
    )
    print("\n### targets\n")
    target_line(
        "publish delay p99 under saturation, asyncbridge with back-off (ms)",
        saturated[ASYNCBRIDGE],
        "<=",
        10,
        f"{args.threads} CPU-bound request threads",
    )
    target_line(
        "publish delay p99 under saturation, without the back-off (ms)",
        saturated[NO_BACK_OFF],
        "<=",
        10,
        "the core before c2c8399, for comparison",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
