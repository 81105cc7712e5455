"""What the request thread pays to hand one no-op coroutine to a background loop.

Run: ``.venv/bin/python bench/handoff.py`` (``--smoke`` for a few-second run).

Three regimes, every row measured in the same run:

* burst: N calls back to back while the loop runs and competes for the GIL;
* caller only: the loop is parked in ``threading.Event.wait`` inside a callback (it holds no GIL),
  so only the caller's own instructions are timed. A parked loop looks starved to the core's
  back-off (c2c8399: 8+ jobs waiting and the wake-up pending > 2 ms, then every call sleeps
  0.5 ms), so this regime runs with the back-off's backlog limit out of reach
  (``without_back_off``): the caller then takes the path of a loop that keeps up, one false
  comparison;
* paced: one call, then ~200 us of ``time.sleep`` (blocking I/O), so the loop is idle and must be
  woken by every call.

The burst and paced regimes run the core as it is; the back-offs it took in the burst are counted
and printed. Each call is timed on its own with ``perf_counter_ns``; the timer pair's own cost is
printed and is included in every row alike. The job records ``perf_counter_ns`` when it runs, so
the end-to-end columns are per job: from the start of the hand-off until the job ran.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import sys
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any

from _common import (
    counting_back_offs,
    machine,
    park_loop,
    percentile,
    print_table,
    target_line,
    wait_for,
    without_back_off,
)
from anyio.from_thread import start_blocking_portal
from loop_cost import asyncbridge_burst_cpu, naive_burst_cpu

import asyncbridge

_now = time.perf_counter_ns


async def job(done: list[int], i: int) -> None:
    """The no-op coroutine every coroutine row hands off: it notes when it ran."""
    done[i] = _now()


def sync_job(done: list[int], i: int) -> None:
    """The same job for the rows that run plain callables (threads, executor, bare callback)."""
    done[i] = _now()


def _same(i: int) -> int:
    return i


Make = Callable[[int], Any]
HandOff = Callable[[Any], object]


@dataclass
class Result:
    row: str
    calls: list[int]  # caller ns per call
    e2e: list[int]  # ns from hand-off start to job run; empty when the job never runs
    # burst: ns from the first hand-off until the last job ran, per job (throughput);
    # caller only: ns from releasing the parked loop until the last job ran, per job (loop cost).
    per_job: float = float("nan")
    back_offs: int = 0  # times the core's back-off slept during the row

    def us(self, q: float) -> float:
        return percentile(self.calls, q) / 1000

    def mean_us(self) -> float:
        return statistics.fmean(self.calls) / 1000

    def per_job_us(self) -> float:
        return self.per_job / 1000

    def e2e_us(self, q: float) -> float:
        return percentile(self.e2e, q) / 1000 if self.e2e else float("nan")


# -- the targets: each row is a context manager yielding (make, hand_off, parker) -----------------
# parker() parks the loop (caller-only regime) and returns a function that releases it; None where
# the row has no loop to park.

Parker = Callable[[], Callable[[], None]] | None


def _loop_parker(loop: asyncio.AbstractEventLoop) -> Callable[[], Callable[[], None]]:
    return lambda: park_loop(loop)


@contextmanager
def _bridge_row(
    method: str, max_pending: int, done: list[int]
) -> Iterator[tuple[Make, HandOff, Parker]]:
    bridge = asyncbridge.Bridge(max_pending=max_pending, drain_timeout=30)
    loop = bridge.get_loop()
    try:
        yield partial(job, done), getattr(bridge, method), _loop_parker(loop)
    finally:
        report = bridge.shutdown()
        if not report.clean:
            print(f"warning: {method} bridge shut down unclean: {report}", file=sys.stderr)


@contextmanager
def _plain_loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="bench-loop", daemon=True)
    thread.start()
    try:
        yield loop
    finally:

        async def settle() -> None:
            pending = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            await asyncio.gather(*pending, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(settle(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(30)
        loop.close()


@contextmanager
def row_run_soon(max_pending: int, done: list[int]) -> Iterator[tuple[Make, HandOff, Parker]]:
    with _bridge_row("run_soon", max_pending, done) as r:
        yield r


@contextmanager
def row_submit(max_pending: int, done: list[int]) -> Iterator[tuple[Make, HandOff, Parker]]:
    with _bridge_row("submit", max_pending, done) as r:
        yield r


@contextmanager
def row_naive(max_pending: int, done: list[int]) -> Iterator[tuple[Make, HandOff, Parker]]:
    with _plain_loop() as loop:
        yield (
            partial(job, done),
            partial(loop.call_soon_threadsafe, loop.create_task),  # type: ignore[arg-type]
            _loop_parker(loop),
        )


@contextmanager
def row_rcts(max_pending: int, done: list[int]) -> Iterator[tuple[Make, HandOff, Parker]]:
    with _plain_loop() as loop:
        yield (
            partial(job, done),
            partial(asyncio.run_coroutine_threadsafe, loop=loop),
            _loop_parker(loop),
        )


@contextmanager
def row_anyio(max_pending: int, done: list[int]) -> Iterator[tuple[Make, HandOff, Parker]]:
    with start_blocking_portal() as portal:
        yield _same, partial(portal.start_task_soon, job, done), None


@contextmanager
def row_executor(max_pending: int, done: list[int]) -> Iterator[tuple[Make, HandOff, Parker]]:
    with ThreadPoolExecutor() as pool:
        yield _same, partial(pool.submit, sync_job, done), None  # type: ignore[call-arg]


@contextmanager
def row_thread(max_pending: int, done: list[int]) -> Iterator[tuple[Make, HandOff, Parker]]:
    def start(i: int) -> None:
        threading.Thread(target=sync_job, args=(done, i)).start()

    yield _same, start, None


@contextmanager
def row_bare(max_pending: int, done: list[int]) -> Iterator[tuple[Make, HandOff, Parker]]:
    with _plain_loop() as loop:
        yield (
            _same,
            partial(loop.call_soon_threadsafe, sync_job, done),  # type: ignore[arg-type]
            _loop_parker(loop),
        )


@contextmanager
def row_floor(max_pending: int, done: list[int]) -> Iterator[tuple[Make, HandOff, Parker]]:
    kept: list[Coroutine[Any, Any, None]] = []
    try:
        yield partial(job, done), kept.append, None
    finally:
        for coro in kept:
            coro.close()


ROWS: dict[
    str, Callable[[int, list[int]], AbstractContextManager[tuple[Make, HandOff, Parker]]]
] = {
    "asyncbridge.run_soon": row_run_soon,
    "asyncbridge.submit": row_submit,
    "call_soon_threadsafe(create_task, coro) (naive)": row_naive,
    "asyncio.run_coroutine_threadsafe": row_rcts,
    "anyio BlockingPortal.start_task_soon": row_anyio,
    "ThreadPoolExecutor.submit": row_executor,
    "threading.Thread per call": row_thread,
    "call_soon_threadsafe(noop) (bare wake-up)": row_bare,
    "floor: create the coroutine": row_floor,
}
RUN_SOON, NAIVE, RCTS, BARE, FLOOR = (
    "asyncbridge.run_soon",
    "call_soon_threadsafe(create_task, coro) (naive)",
    "asyncio.run_coroutine_threadsafe",
    "call_soon_threadsafe(noop) (bare wake-up)",
    "floor: create the coroutine",
)
PARKABLE = [RUN_SOON, "asyncbridge.submit", NAIVE, RCTS, BARE, FLOOR]


# -- the regimes ----------------------------------------------------------------------------------


def _measure(name: str, n: int, *, regime: str) -> Result:
    with ExitStack() as stack:
        if regime == "caller":
            stack.enter_context(without_back_off())
        counter = stack.enter_context(counting_back_offs())
        result = _measure_once(name, n, regime=regime)
    result.back_offs = counter[0]
    return result


def _measure_once(name: str, n: int, *, regime: str) -> Result:
    done = [0] * n
    starts = [0] * n
    calls = [0] * n
    now = _now
    gc.collect()
    with ROWS[name](n + 1000, done) as (make, hand_off, parker):
        release: Callable[[], None] | None = None
        if regime == "caller":
            if parker is not None:
                release = parker()
        try:
            for i in range(n):
                t0 = now()
                hand_off(make(i))
                t1 = now()
                starts[i] = t0
                calls[i] = t1 - t0
        finally:
            released = now()
            if release is not None:
                release()
        if name == FLOOR:
            return Result(name, calls, [])
        wait_for(lambda: 0 not in done, 120, f"{name}: all {n} jobs to run")
    origin = released if release is not None else starts[0]
    return Result(
        name,
        calls,
        [d - s for d, s in zip(done, starts, strict=True)],
        (max(done) - origin) / n,
    )


def _measure_paced(n: int, pause: float) -> dict[str, Result]:
    """Every row open at once, called round-robin, so machine noise falls on all rows alike."""
    names = list(ROWS)
    dones = {name: [0] * n for name in names}
    starts = {name: [0] * n for name in names}
    calls = {name: [0] * n for name in names}
    now = _now
    gc.collect()
    with ExitStack() as stack:
        targets = [
            (name, *stack.enter_context(ROWS[name](n + 1000, dones[name]))[:2]) for name in names
        ]
        for i in range(n):
            for name, make, hand_off in targets:
                t0 = now()
                hand_off(make(i))
                t1 = now()
                starts[name][i] = t0
                calls[name][i] = t1 - t0
                time.sleep(pause)
        for name in names:
            if name != FLOOR:
                wait_for(lambda d=dones[name]: 0 not in d, 120, f"{name}: all {n} jobs to run")  # type: ignore[misc]
    return {
        name: Result(
            name,
            calls[name],
            []
            if name == FLOOR
            else [d - s for d, s in zip(dones[name], starts[name], strict=True)],
        )
        for name in names
    }


def _untimed_mean_us(name: str, n: int) -> float:
    """Mean caller cost with the loop parked and no timer inside the loop (caller-only regime)."""
    done = [0] * n
    gc.collect()
    with without_back_off(), ROWS[name](n + 1000, done) as (make, hand_off, parker):
        release = parker() if parker is not None else None
        try:
            t0 = _now()
            for i in range(n):
                hand_off(make(i))
            elapsed = _now() - t0
        finally:
            if release is not None:
                release()
        if name != FLOOR:
            wait_for(lambda: 0 not in done, 120, f"{name}: all {n} jobs to run")
    return elapsed / n / 1000


def _timer_ns(n: int = 100_000) -> float:
    now = _now
    samples = [0] * n
    for i in range(n):
        t0 = now()
        t1 = now()
        samples[i] = t1 - t0
    return percentile(samples, 50)


def _median_of(results: list[Result], fn: Callable[[Result], float]) -> float:
    return statistics.median(fn(r) for r in results)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--burst", type=int, default=50_000, help="calls per burst (50000)")
    parser.add_argument("--paced", type=int, default=2_000, help="calls in the paced regime")
    parser.add_argument("--pause-us", type=float, default=200.0, help="sleep between paced calls")
    parser.add_argument("--slow-burst", type=int, default=10_000, help="burst for the slow rows")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; medians shown")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, one round (seconds)")
    args = parser.parse_args(argv)
    if args.smoke:
        args.burst, args.paced, args.slow_burst, args.rounds = 2_000, 100, 200, 1
    slow = {"anyio BlockingPortal.start_task_soon", "threading.Thread per call"}

    print("# hand-off benchmark")
    print(f"machine: {machine()}")
    print(
        f"burst {args.burst} calls ({args.slow_burst} for the thread and anyio rows), "
        f"paced {args.paced} calls with {args.pause_us:g} us sleeps, {args.rounds} round(s); "
        "figures are medians over rounds"
    )
    timer = _timer_ns()
    print(f"timer pair overhead (included in every caller figure): {timer / 1000:.3f} us")

    burst: dict[str, list[Result]] = {name: [] for name in ROWS}
    caller: dict[str, list[Result]] = {name: [] for name in PARKABLE}
    paced: dict[str, list[Result]] = {name: [] for name in ROWS}
    untimed: dict[str, list[float]] = {RUN_SOON: [], FLOOR: []}
    for _ in range(args.rounds):
        for name in ROWS:
            n = args.slow_burst if name in slow else args.burst
            burst[name].append(_measure(name, n, regime="burst"))
        for name in PARKABLE:
            caller[name].append(_measure(name, args.burst, regime="caller"))
        for name in untimed:
            untimed[name].append(_untimed_mean_us(name, args.burst))
        for name, result in _measure_paced(args.paced, args.pause_us / 1e6).items():
            paced[name].append(result)

    def rows_of(table: dict[str, list[Result]], floor_row: str) -> list[list[object]]:
        base = _median_of(table[floor_row], lambda r: r.us(50))
        out: list[list[object]] = []
        for name, results in table.items():
            p50 = _median_of(results, lambda r: r.us(50))
            out.append(
                [
                    name,
                    p50,
                    _median_of(results, lambda r: r.us(99)),
                    _median_of(results, Result.mean_us),
                    p50 / base,
                    _median_of(results, lambda r: r.e2e_us(50)),
                    _median_of(results, lambda r: r.e2e_us(99)),
                    _median_of(results, Result.per_job_us),
                ]
            )
        return out

    header = [
        "row",
        "caller p50 us",
        "caller p99 us",
        "caller mean us",
        "p50 / run_soon",
        "e2e p50 us",
        "e2e p99 us",
        "wall per job us",
    ]
    print_table("burst (loop running)", header, rows_of(burst, RUN_SOON))
    print(
        "\nback-offs taken in the burst (0.5 ms sleeps; per round): "
        + "; ".join(
            f"{name} {[r.back_offs for r in burst[name]]} of {len(burst[name][0].calls)} calls"
            for name in (RUN_SOON, "asyncbridge.submit")
        )
    )
    caller_header = [*header[:4], "p50 / floor", *header[5:7], "loop drain per job us"]
    print_table("caller only (loop parked)", caller_header, rows_of(caller, FLOOR))
    print_table(
        "paced (idle loop woken per call)", header[:7], [r[:7] for r in rows_of(paced, RUN_SOON)]
    )

    def p50(table: dict[str, list[Result]], name: str) -> float:
        return _median_of(table[name], lambda r: r.us(50))

    def mean(table: dict[str, list[Result]], name: str) -> float:
        return _median_of(table[name], Result.mean_us)

    # End to end (issue 10 section 3): process and loop-thread CPU per no-op job, from the first
    # hand-off to the last job done, for a burst (the method of bench/loop_cost.py).
    cpu_burst = 2_000 if args.smoke else args.burst
    ours_cpu = [asyncbridge_burst_cpu(cpu_burst) for _ in range(args.rounds)]
    naive_cpu = [naive_burst_cpu(cpu_burst) for _ in range(args.rounds)]
    ours_proc = statistics.median(c for c, _ in ours_cpu)
    ours_loop = statistics.median(lp for _, lp in ours_cpu)
    naive_proc = statistics.median(c for c, _ in naive_cpu)
    print_table(
        f"end to end: CPU per no-op job, burst of {cpu_burst}, first hand-off to last job done",
        ["hand-off", "process CPU per job us", "loop CPU per job us", "naive / this (process)"],
        [
            ["asyncbridge run_soon", ours_proc, ours_loop, naive_proc / ours_proc],
            [
                NAIVE,
                naive_proc,
                statistics.median(lp for _, lp in naive_cpu),
                1.0,
            ],
        ],
    )

    print("\n### targets (ratios from this run)\n")
    checks = [
        target_line(
            "burst: naive / run_soon, caller p50",
            p50(burst, NAIVE) / p50(burst, RUN_SOON),
            ">=",
            5,
            f"mean ratio {mean(burst, NAIVE) / mean(burst, RUN_SOON):.2f}",
        ),
        target_line(
            "burst: run_coroutine_threadsafe / run_soon, caller p50",
            p50(burst, RCTS) / p50(burst, RUN_SOON),
            ">=",
            12,
            f"mean ratio {mean(burst, RCTS) / mean(burst, RUN_SOON):.2f}",
        ),
        target_line(
            "caller only: run_soon / floor, caller p50",
            p50(caller, RUN_SOON) / p50(caller, FLOOR),
            "<=",
            3,
            "untimed-loop mean ratio "
            f"{statistics.median(untimed[RUN_SOON]) / statistics.median(untimed[FLOOR]):.2f} "
            f"({statistics.median(untimed[RUN_SOON]):.3f} us vs "
            f"{statistics.median(untimed[FLOOR]):.3f} us)",
        ),
        target_line(
            "paced: run_soon / bare call_soon_threadsafe(noop), caller p50",
            p50(paced, RUN_SOON) / p50(paced, BARE),
            "<=",
            1.2,
            f"mean ratio {mean(paced, RUN_SOON) / mean(paced, BARE):.2f}",
        ),
        target_line(
            "end to end: naive / run_soon, process CPU per job",
            naive_proc / ours_proc,
            ">=",
            3,
            f"{ours_proc:.2f} vs {naive_proc:.2f} us",
        ),
        target_line("end to end: run_soon's loop CPU per job, us", ours_loop, "<=", 6, ""),
    ]
    print(f"\n{sum(checks)}/{len(checks)} targets met")
    return 0


if __name__ == "__main__":
    sys.exit(main())
