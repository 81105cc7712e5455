"""What the operators' view costs: the stall watchdog, publishing the counts, the metrics.

Run: ``.venv/bin/python bench/operators.py`` (``--smoke`` for a short run; ``--no-seed`` skips
the gunicorn part, which takes most of the time).

Every table compares, in the same run, interleaved:

* ``off``: ``stall_warning=None`` and no status directory, which is the core as it was before
  the watchdog and the publishing existed (neither does anything then);
* ``watchdog``: the default, ``stall_warning=1.0``;
* ``watchdog + publishing``: also a status directory, so the loop rewrites the process's status
  file at most once per loop turn and times every job for the histograms; this is everything
  the Prometheus metrics need in a worker (the collector itself runs at scrape time only).

Tables:

1. idle: the process's CPU over ``--idle`` seconds with a started bridge and nothing to do, and
   the share of one core that is;
2. burst: 50,000 no-op jobs handed off back to back: the caller's time per hand-off, and process
   and loop-thread CPU per job from the first hand-off until the last job has finished;
3. one write: what one update of a worker's figures costs, asyncbridge's status file against
   prometheus_client's multiprocess files (one locked write per value), in a fresh interpreter;
4. the seed scenario (bench/seed_scenario.py: gunicorn, 2 sync workers, one notification per
   request to a sink answering in 100 ms, saturated with 8 connections): req/s.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import timeit
from collections.abc import Callable
from pathlib import Path

from _common import ROOT, machine, print_table, target_line, wait_for

import asyncbridge
from asyncbridge import _publish

CONFIGS: dict[str, dict[str, object]] = {
    "off": {"stall_warning": None},
    "watchdog": {},
    "watchdog + publishing": {"status_dir": ""},  # a fresh directory per run
}


async def _noop() -> None:
    return None


def _thread_cpu(thread: threading.Thread) -> Callable[[], float]:
    assert thread.ident is not None
    clock = time.pthread_getcpuclockid(thread.ident)
    return lambda: time.clock_gettime(clock)


def _bridge(config: str, tmp: str, **extra: object) -> asyncbridge.Bridge:
    options: dict[str, object] = {**CONFIGS[config], **extra}
    if "status_dir" in options:
        options["status_dir"] = tempfile.mkdtemp(dir=tmp)
    return asyncbridge.Bridge(**options)


def idle(config: str, seconds: float, tmp: str) -> float:
    """Process CPU seconds over ``seconds`` of an idle, started bridge."""
    bridge = _bridge(config, tmp)
    bridge.start()
    bridge.run(_noop(), timeout=5)
    time.sleep(0.5)  # past the start
    cpu0 = time.process_time()
    time.sleep(seconds)
    cpu = time.process_time() - cpu0
    bridge.shutdown(5, log=False)
    return cpu


def burst(config: str, n: int, tmp: str) -> tuple[float, float, float]:
    """(caller ns per hand-off, process us per job, loop-thread us per job) for a burst."""
    bridge = _bridge(config, tmp, max_pending=n + 10, max_concurrency=None)
    bridge.start()
    thread = bridge._rt.thread
    assert thread is not None
    loop_cpu = _thread_cpu(thread)
    coros = [_noop() for _ in range(n)]
    gc.collect()
    run_soon = bridge.run_soon
    cpu0, loop0, wall0 = time.process_time(), loop_cpu(), time.perf_counter()
    for coro in coros:
        run_soon(coro)
    caller = time.perf_counter() - wall0
    wait_for(lambda: bridge.stats().completed == n, 120, "the burst to finish")
    cpu, loop = time.process_time() - cpu0, loop_cpu() - loop0
    report = bridge.shutdown(5, log=False)
    assert report.stats.completed == n, report
    return caller / n * 1e9, cpu / n * 1e6, loop / n * 1e6


_ONE_WRITE = """
import os, sys, tempfile, timeit
os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp()
from prometheus_client import Counter, Gauge, Histogram
from asyncbridge._publish import Publisher, Timing, DURATION_BOUNDS

n = int(sys.argv[1])
pub = Publisher(tempfile.mkdtemp())
timing = Timing()
counts = tuple(range(11))
lanes = [("default", counts, timing)]
ours_counters = min(timeit.repeat(lambda: pub.write(lanes), number=n, repeat=5)) / n
ours_all = min(timeit.repeat(lambda: pub.write(lanes, histograms=True), number=n, repeat=5)) / n

# The same update through prometheus_client's multiprocess mode: the counters that changed in a
# busy turn (accepted, completed), the two gauges, and one observation in each histogram.
acc = Counter("a", "x", ["lane"]).labels("default")
done = Counter("c", "x", ["lane"]).labels("default")
pending = Gauge("p", "x", ["lane"], multiprocess_mode="livesum").labels("default")
running = Gauge("r", "x", ["lane"], multiprocess_mode="livesum").labels("default")
wait = Histogram("w", "x", ["lane"]).labels("default")
duration = Histogram("d", "x", ["lane"], buckets=DURATION_BOUNDS).labels("default")

def theirs():
    acc.inc(1); done.inc(1); pending.set(0); running.set(3)
    wait.observe(0.002); duration.observe(0.1)

theirs_turn = min(timeit.repeat(theirs, number=n, repeat=5)) / n
print(ours_counters, ours_all, theirs_turn)
"""


def one_write(n: int) -> tuple[float, float, float]:
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(_ONE_WRITE), str(n)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        check=True,
    )
    a, b, c = (float(x) for x in done.stdout.split())
    return a, b, c


def _writes(directory: str) -> int:
    """How many times the processes of ``directory`` wrote their status file (the ``seq``)."""
    total = 0
    for path in Path(directory).glob("*.asyncbridge"):
        with open(path, "rb") as f:
            f.seek(_publish._SEQ_OFFSET)
            total += _publish._SEQ.unpack(f.read(_publish._SEQ.size))[0]
    return total


def flush_cost(n: int) -> float:
    """Seconds per loop-side flush: the call_soon that queues it and the write itself."""
    bridge = asyncbridge.Bridge(status_dir=tempfile.mkdtemp(), stall_warning=None)
    bridge.start()
    rt = bridge._rt
    pub = rt.publisher
    assert pub is not None
    loop = asyncio.new_event_loop()  # not running: call_soon only makes and queues the handle

    def one() -> None:
        loop.call_soon(pub.flush)
        pub.flush()

    try:
        best = min(timeit.repeat(one, number=n, repeat=5)) / n
    finally:
        loop.close()
        bridge.shutdown(5, log=False)
    return best


def timing_cost(n: int) -> float:
    """Seconds per job of keeping its wait and run time (what the loop adds per job)."""
    timing = _publish.Timing()
    monotonic = time.monotonic
    counter = iter(range(10**9))

    def one() -> None:
        k = next(counter)
        timing.pulled(k + 1, monotonic())
        began = monotonic()
        timing.took(k, 1, began, began)
        timing.duration.add(monotonic() - began)

    return min(timeit.repeat(one, number=n, repeat=5)) / n


WRITES: list[tuple[int, int]] = []  # (status file writes, accepted jobs) of publishing runs


def seed(config: str, seconds: float, tmp: str) -> tuple[float, int, int, float]:
    """(req/s, accepted, received, workers' CPU us per request) of one saturated seed-scenario
    run under ``config``."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import seed_scenario

    saved = {k: os.environ.get(k) for k in ("ASYNCBRIDGE_STALL_WARNING", "ASYNCBRIDGE_STATUS_DIR")}
    try:
        os.environ.pop("ASYNCBRIDGE_STATUS_DIR", None)
        if config == "off":
            os.environ["ASYNCBRIDGE_STALL_WARNING"] = "none"
        else:
            os.environ.pop("ASYNCBRIDGE_STALL_WARNING", None)
        directory = tempfile.mkdtemp(dir=tmp)
        if config == "watchdog + publishing":
            os.environ["ASYNCBRIDGE_STATUS_DIR"] = directory
        run = seed_scenario.one_run(
            "asyncbridge", "saturation", seconds, seed_scenario.ensure_wrk(), 300.0
        )
        if config == "watchdog + publishing":
            WRITES.append((_writes(directory), run.accepted))
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    cpu_per_request = (run.main_cpu + run.other_cpu) / max(1, run.served) * 1e6
    return run.rps, run.accepted, run.received, cpu_per_request


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="the operators' view: what it costs")
    parser.add_argument("--runs", type=int, default=5, help="interleaved runs per config (5)")
    parser.add_argument("--idle", type=float, default=20.0, help="idle seconds per run (20)")
    parser.add_argument("--burst", type=int, default=50_000, help="jobs per burst (50,000)")
    parser.add_argument("--seconds", type=float, default=8.0, help="seed load per run (8)")
    parser.add_argument("--seed-runs", type=int, default=5, help="seed runs per config (5)")
    parser.add_argument("--no-seed", action="store_true", help="skip the gunicorn seed scenario")
    parser.add_argument("--only-seed", action="store_true", help="the seed scenario alone")
    parser.add_argument("--smoke", action="store_true", help="a few seconds in all")
    args = parser.parse_args(argv)
    if args.smoke:
        args.runs, args.idle, args.burst, args.no_seed = 1, 0.5, 2000, True
    print("# the operators' view: watchdog, publishing, metrics")
    print(f"machine: {machine()}")
    with tempfile.TemporaryDirectory(prefix="bench-operators-") as tmp:
        idle_cpu: dict[str, list[float]] = {c: [] for c in CONFIGS}
        bursts: dict[str, list[tuple[float, float, float]]] = {c: [] for c in CONFIGS}
        for _ in range(0 if args.only_seed else args.runs):
            for config in CONFIGS:
                idle_cpu[config].append(idle(config, args.idle, tmp))
                bursts[config].append(burst(config, args.burst, tmp))
        rows: list[list[object]] = []
        if not args.only_seed:
            for config, cpus in idle_cpu.items():
                med = statistics.median(cpus)
                rows.append([config, med * 1e3, 100 * med / args.idle])
            print_table(
                f"idle: process CPU over {args.idle:g} s (medians of {args.runs})",
                ["config", "CPU ms", "% of one core"],
                rows,
            )
            rows = []
            for config, runs in bursts.items():
                rows.append([config, *(statistics.median(r[i] for r in runs) for i in range(3))])
            print_table(
                f"burst of {args.burst:,} no-op jobs (medians of {args.runs})",
                ["config", "caller ns per hand-off", "process us per job", "loop us per job"],
                rows,
            )
            ours_counters, ours_all, theirs = one_write(2000 if args.smoke else 100_000)
            print_table(
                "one update of a worker's figures (best of 5)",
                ["writer", "us per update"],
                [
                    ["asyncbridge status file: counters (each loop turn)", ours_counters * 1e6],
                    ["asyncbridge status file: counters and histograms", ours_all * 1e6],
                    [
                        "prometheus_client multiprocess: 2 counters, 2 gauges, 2 observations",
                        theirs * 1e6,
                    ],
                ],
            )
        seeds: dict[str, list[tuple[float, int, int, float]]] = {c: [] for c in CONFIGS}
        if not args.no_seed:
            names = list(CONFIGS)
            for i in range(args.seed_runs):
                # A different order each round: a machine whose load drifts within a round
                # must not favour whichever config runs first.
                for config in names[i % len(names) :] + names[: i % len(names)]:
                    seeds[config].append(seed(config, args.seconds, tmp))
            rows = []
            for config, seed_runs in seeds.items():
                accepted = sum(r[1] for r in seed_runs)
                received = sum(r[2] for r in seed_runs)
                rows.append(
                    [
                        config,
                        statistics.median(r[0] for r in seed_runs),
                        f"{min(r[0] for r in seed_runs):.0f}-{max(r[0] for r in seed_runs):.0f}",
                        statistics.median(r[3] for r in seed_runs),
                        f"{received}/{accepted}",
                    ]
                )
            print_table(
                f"seed scenario at saturation (medians of {args.seed_runs})",
                ["config", "req/s", "req/s range", "workers' CPU us/req", "received/accepted"],
                rows,
            )
    print("\n### targets (ratios from this run)\n")
    if not args.only_seed:
        off_idle = statistics.median(idle_cpu["off"])
        for config in ("watchdog", "watchdog + publishing"):
            extra = statistics.median(idle_cpu[config]) - off_idle
            target_line(
                f"idle: {config} over off, % of one core",
                max(0.0, 100 * extra / args.idle),
                "<=",
                1.0,
                "medians",
            )
        off_loop = statistics.median(r[2] for r in bursts["off"])
        for config in ("watchdog", "watchdog + publishing"):
            print(
                f"(burst: {config} / off, loop CPU per job: "
                f"{statistics.median(r[2] for r in bursts[config]) / off_loop:.2f}; the hand-off "
                "itself is bench/hotpath.py's, unchanged code)"
            )
    if not args.no_seed:
        off_rps = statistics.median(r[0] for r in seeds["off"])
        for config in ("watchdog", "watchdog + publishing"):
            target_line(
                f"seed scenario: {config} / off req/s",
                statistics.median(r[0] for r in seeds[config]) / off_rps,
                ">=",
                0.98,
                "medians",
            )
        flush = flush_cost(20_000)
        per_job_timing = timing_cost(100_000)
        writes = sum(w for w, _ in WRITES)
        jobs = sum(a for _, a in WRITES) or 1
        cpu_pub = statistics.median(r[3] for r in seeds["watchdog + publishing"])
        extra = writes / jobs * flush * 1e6 + per_job_timing * 1e6
        print(
            f"(publishing in the seed scenario: {writes:,} status writes for {jobs:,} jobs, "
            f"{writes / jobs:.2f} per job; one flush costs {flush * 1e6:.1f} us here and timing "
            f"a job {per_job_timing * 1e6:.2f} us, so {extra:.1f} us per request of the "
            f"workers' {cpu_pub:.0f} us: {100 * extra / cpu_pub:.2f}%)"
        )
        target_line(
            "seed scenario: publishing's counted cost, % of the workers' CPU per request",
            100 * extra / cpu_pub,
            "<=",
            2.0,
            "writes per job x cost per write, plus timing",
        )
        off_cpu = statistics.median(r[3] for r in seeds["off"])
        for config in ("watchdog", "watchdog + publishing"):
            target_line(
                f"seed scenario: {config} / off, workers' CPU per request",
                statistics.median(r[3] for r in seeds[config]) / off_cpu,
                "<=",
                1.02,
                "medians",
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
