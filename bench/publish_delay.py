"""Publish delay: from ``run_soon`` to the coroutine's first step, with request threads saturated.

Run: ``.venv/bin/python bench/publish_delay.py`` (``--smoke`` for a one-second run).

Request threads loop forever doing "request work" (pure-Python CPU, optionally followed by a
blocking-I/O-like sleep) and hand one coroutine off per request. The coroutine notes how long it
waited for its first step. The question: does the scheduler starve the loop thread under the GIL?
The same load is run against the naive loop-in-thread for comparison.
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

from _common import machine, percentile, print_table, target_line

import asyncbridge

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

_STARVED = 0.002
_BACKOFF = 0.0005
_BACKLOG_HINT = 8


class YieldingBridge(asyncbridge.Bridge):
    """Prototype of a core change: a caller that finds the loop's wake-up overdue backs off.

    ``run_soon`` queues one wake-up and later callers only append, so no caller releases the GIL
    while the wake-up is pending. Under CPU-bound request threads the loop thread then gets the
    GIL only from the 5 ms forced switches, shared with every other thread, and it needs several
    turns (read the wake-up, create the task, step it). Here a caller that sees the wake-up pending
    for more than 2 ms sleeps 0.5 ms, which releases the GIL; once every request thread does so
    the loop thread runs. Callers pay nothing while the loop keeps up. (``os.sched_yield()``
    instead of the sleep was tried: it hands the GIL to one waiter at random and barely helps.)
    """

    _scheduled_at = 0.0

    def run_soon(self, coro: Coroutine[Any, Any, Any], /) -> bool:
        rt = self._rt
        pending = rt.scheduled
        accepted = super().run_soon(coro)
        if not pending:
            # This call queued the wake-up (and paid ~10 us for it): note when.
            self._scheduled_at = time.monotonic()
        elif (
            len(rt.inbox) >= _BACKLOG_HINT  # free test first: a starved loop has a backlog
            and rt.scheduled
            and time.monotonic() - self._scheduled_at > _STARVED
            and not self.in_loop_thread()  # never sleep on the loop itself
        ):
            time.sleep(_BACKOFF)
        return accepted


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
def _yielding() -> Iterator[HandOff]:
    bridge = YieldingBridge(max_pending=1_000_000)
    bridge.start()
    try:
        yield bridge.run_soon
    finally:
        bridge.shutdown(30)


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


TARGETS = {
    "asyncbridge.run_soon": _asyncbridge,
    "naive call_soon_threadsafe": _naive,
    "prototype: back off when wake-up overdue": _yielding,
    "floor: plain thread woken by SimpleQueue": _plain_thread,
}


def run_load(
    target: str, threads: int, cpu_ms: float, io_ms: float, seconds: float
) -> tuple[list[int], int]:
    """Run the load; return the delays (ns) and the number of requests served."""
    delays: list[int] = []
    stop = threading.Event()
    served = [0] * threads

    with TARGETS[target]() as hand_off:

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
    return delays, sum(served)


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
    rows: list[list[object]] = []
    saturated_p99: float = float("nan")
    for label, threads, io_ms in loads:
        for target in TARGETS:
            delays, served = run_load(target, threads, args.cpu_ms, io_ms, args.seconds)
            p99 = percentile(delays, 99) / 1e6
            rows.append(
                [
                    label,
                    target,
                    served,
                    percentile(delays, 50) / 1e6,
                    p99,
                    max(delays) / 1e6,
                ]
            )
            if target == "asyncbridge.run_soon" and "saturated" in label:
                saturated_p99 = p99
    print_table(
        "publish delay",
        ["load", "hand-off", "jobs", "p50 ms", "p99 ms", "max ms"],
        rows,
    )
    print("\n### targets\n")
    proto = [r for r in rows if "saturated" in str(r[0]) and str(r[1]).startswith("prototype")]
    target_line(
        "publish delay p99 under saturation (ms)",
        saturated_p99,
        "<=",
        10,
        f"{args.threads} CPU-bound request threads",
    )
    if proto:
        target_line(
            "publish delay p99 under saturation, prototype (ms)",
            float(proto[0][4]),  # type: ignore[arg-type]
            "<=",
            10,
            "YieldingBridge in this file: the proposed core change",
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
