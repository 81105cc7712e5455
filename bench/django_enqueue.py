"""What ``task.enqueue()`` costs the caller: AsyncBridgeBackend against Django's ImmediateBackend.

Run: ``.venv/bin/python bench/django_enqueue.py`` (``--smoke`` for a quick run). Works with
Django 6 (``django.tasks``) and with Django 5.2 and the ``django-tasks`` backport.

The same task functions run on both backends, enqueued from this (synchronous) thread:

- ``post``: an ``async def`` task that POSTs one JSON notification to a local aiohttp sink that
  answers at once, with an ``aiohttp.ClientSession`` of its own (a session of the bridge would
  not work under ImmediateBackend, which runs the task on a loop it makes for the call);
- ``noop async`` and ``noop sync``: tasks that do nothing, for each backend's fixed cost.

ImmediateBackend runs the task inside ``enqueue()``; AsyncBridgeBackend records it, hands it to
the bridge and returns. Each row times every call (``perf_counter_ns``) over ``--rounds`` rounds
that alternate the backends, then waits (untimed) for the bridge to finish the round and checks
that every task succeeded. The ratio is ImmediateBackend's median over AsyncBridgeBackend's.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from collections.abc import Callable
from typing import Any

import aiohttp
from _common import machine, park_loop, percentile, print_table, target_line, without_back_off

import asyncbridge
from tests.e2e.sink import Sink

SINK_URL = ""


async def post(i: int) -> None:
    """The realistic task: one notification to the sink."""
    async with aiohttp.ClientSession() as session, session.post(SINK_URL, json={"id": i}) as r:
        r.raise_for_status()


async def noop_async() -> None:
    """An async task that does nothing."""


def noop_sync() -> None:
    """A sync task that does nothing."""


def _configure_django() -> Any:
    """Settings for two backends; returns the Tasks module in use."""
    import django  # type: ignore[import-untyped]
    from django.conf import settings  # type: ignore[import-untyped]

    try:
        import django.tasks as tasks  # type: ignore[import-untyped]
    except ImportError:
        import django_tasks as tasks
    settings.configure(
        USE_TZ=True,
        INSTALLED_APPS=[],
        DATABASES={},
        LOGGING_CONFIG=None,  # the backport logs every task at INFO; keep the output a table
        TASKS={
            "bridge": {"BACKEND": "asyncbridge.django.AsyncBridgeBackend"},
            "immediate": {"BACKEND": f"{tasks.__name__}.backends.immediate.ImmediateBackend"},
        },
    )
    django.setup()
    return tasks


def _time_calls(enqueue: Callable[[int], Any], n: int, gap: float) -> tuple[list[float], list[Any]]:
    """Time ``n`` calls; with ``gap`` seconds of sleep after each (paced) or none (burst)."""
    times: list[float] = []
    results: list[Any] = []
    clock = time.perf_counter_ns
    for i in range(n):
        t0 = clock()
        result = enqueue(i)
        times.append((clock() - t0) / 1000)
        results.append(result)
        if gap:
            time.sleep(gap)
    return times, results


REGIMES = ("paced", "burst", "caller only")
TASKS: dict[str, Callable[..., Any]] = {
    "post": post,
    "noop async": noop_async,
    "noop sync": noop_sync,
}


def _row(
    tasks: Any, alias: str, func: Callable[..., Any], regime: str, calls: int, gap: float
) -> list[float]:
    """One timed row; checks that every task it enqueued succeeded."""
    task = tasks.task(backend=alias)(func)
    with_arg = func is post
    bridge = asyncbridge.default_bridge()
    release: Callable[[], None] | None = None
    if regime == "caller only" and alias == "bridge":
        # The loop holds still (in Event.wait, no GIL), so only the caller's own work is timed;
        # the core's back-off, which would take the parked loop for a starved one, is off.
        release = park_loop(bridge.get_loop())
    try:
        with without_back_off() if release is not None else contextlib.nullcontext():
            times, results = _time_calls(
                lambda i: task.enqueue(i) if with_arg else task.enqueue(),
                calls,
                gap if regime == "paced" else 0.0,
            )
    finally:
        if release is not None:
            release()
    if alias == "bridge":
        if not bridge.drain(120):
            raise TimeoutError("the bridge did not finish the row within 120 s")
        for result in results:
            result.refresh()
    bad = [r for r in results if str(r.status) != "SUCCESSFUL"]
    if bad:
        raise RuntimeError(f"{alias} {func.__name__}: {bad[0].status} {bad[0].errors}")
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=300, help="enqueues per row and round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds, alternating the backends")
    parser.add_argument("--gap-ms", type=float, default=2.0, help="sleep between paced calls")
    parser.add_argument("--smoke", action="store_true", help="a run of a few seconds")
    args = parser.parse_args()
    calls, rounds = (20, 1) if args.smoke else (args.calls, args.rounds)

    global SINK_URL
    tasks = _configure_django()
    import django

    print(f"# Django Tasks: what enqueue() costs the caller\n\n{machine()}")
    print(
        f"Django {django.__version__}, Tasks from {tasks.__name__}; {calls} calls per row and "
        f"round, {rounds} rounds; paced: {args.gap_ms:g} ms between calls"
    )
    bridge = asyncbridge.default_bridge()
    bridge.start()
    medians: dict[tuple[str, str, str], float] = {}
    tables: dict[str, list[list[object]]] = {regime: [] for regime in REGIMES}
    with Sink() as sink:
        SINK_URL = sink.url
        for regime in REGIMES:
            for label, func in TASKS.items():
                samples: dict[str, list[float]] = {"bridge": [], "immediate": []}
                for _ in range(rounds):
                    for alias in ("immediate", "bridge"):
                        samples[alias] += _row(
                            tasks, alias, func, regime, calls, args.gap_ms / 1000
                        )
                for alias, name in (("bridge", "AsyncBridgeBackend"), ("immediate", "Immediate")):
                    values = samples[alias]
                    medians[regime, label, alias] = percentile(values, 50)
                    tables[regime].append(
                        [
                            label,
                            name,
                            len(values),
                            percentile(values, 50),
                            percentile(values, 90),
                            percentile(values, 99),
                        ]
                    )
    report = bridge.shutdown(10, log=False)
    for regime in REGIMES:
        note = {
            "paced": "one call, then a pause; the loop runs the tasks meanwhile",
            "burst": "calls back to back while the loop runs the tasks",
            "caller only": "AsyncBridgeBackend with the loop parked: the caller's own work",
        }[regime]
        print_table(
            f"{regime}: enqueue() in microseconds ({note})",
            ["task", "backend", "calls", "p50 us", "p90 us", "p99 us"],
            tables[regime],
        )
    print()
    for regime in REGIMES:
        for label in TASKS:
            immediate = medians[regime, label, "immediate"]
            ours = medians[regime, label, "bridge"]
            print(
                f"ratio {regime}, {label}: ImmediateBackend p50 {immediate:.1f} us / "
                f"AsyncBridgeBackend p50 {ours:.1f} us = {immediate / ours:.1f}x"
            )
    s = report.stats
    expected = len(REGIMES) * len(TASKS) * calls * rounds
    print(
        f"\nbridge accounting: accepted={s.accepted} completed={s.completed} failed={s.failed} "
        f"(expected {expected} accepted and completed)"
    )
    print()
    target_line(
        "AsyncBridgeBackend enqueue p50, paced post (ms)",
        medians["paced", "post", "bridge"] / 1000,
        "<=",
        1.0,
        "well under a millisecond",
    )
    target_line(
        "ImmediateBackend / AsyncBridgeBackend enqueue p50, paced post (x)",
        medians["paced", "post", "immediate"] / medians["paced", "post", "bridge"],
        ">=",
        10.0,
        "tens of ms against well under one",
    )
    return 0 if s.accepted == s.completed == expected and s.failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
