"""Helpers shared by the benchmarks: percentiles, tables, target lines, machine facts."""

from __future__ import annotations

import asyncio
import os
import platform
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
# So that a fresh clone finds asyncbridge and the shared e2e harness without an install.
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from asyncbridge import _admission, _bridge  # noqa: E402 - after the path set-up above

__all__ = [
    "ROOT",
    "counting_back_offs",
    "machine",
    "park_loop",
    "percentile",
    "print_table",
    "rss_kib",
    "target_line",
    "wait_for",
    "without_back_off",
]


def park_loop(loop: asyncio.AbstractEventLoop) -> Callable[[], None]:
    """Block ``loop`` in a callback (holding no GIL) until the returned function is called."""
    parked, release = threading.Event(), threading.Event()

    def hold() -> None:
        parked.set()
        release.wait(120)

    loop.call_soon_threadsafe(hold)
    if not parked.wait(10):
        raise TimeoutError("the loop did not park within 10 s")
    return release.set


@contextmanager
def without_back_off() -> Iterator[None]:
    """Put the core's back-off for a starved loop out of reach; restore it after.

    ``Bridge.run_soon`` sleeps ``_BACKOFF`` when it finds ``_BACKLOG_BEFORE_BACKOFF`` or more jobs
    waiting and the wake-up overdue. A backlog limit no inbox can reach leaves only the comparison
    that a loop keeping up costs (for a parked loop, which would look starved, or for comparison).
    """
    saved = _bridge._BACKLOG_BEFORE_BACKOFF
    _bridge._BACKLOG_BEFORE_BACKOFF = sys.maxsize
    try:
        yield
    finally:
        _bridge._BACKLOG_BEFORE_BACKOFF = saved


@contextmanager
def counting_back_offs() -> Iterator[list[int]]:
    """Count the core's back-offs (sleeps) while inside; yields a one-element counter."""
    count = [0]
    original = _admission.back_off

    def counted(lane: Any) -> None:
        if not lane.runtime.in_loop_thread():  # where the core sleeps
            count[0] += 1
        original(lane)

    _admission.back_off = counted
    try:
        yield count
    finally:
        _admission.back_off = original


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) by nearest rank; NaN for an empty sequence."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1))))
    return ordered[rank]


def print_table(title: str, header: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """Print a Markdown table (so it pastes into docs/performance.md as is)."""
    cells = [[str(c) for c in header]] + [[_fmt(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    print(f"\n### {title}\n")
    for n, row in enumerate(cells):
        print("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |")
        if n == 0:
            print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    sys.stdout.flush()


def _fmt(value: object) -> str:
    if isinstance(value, float):
        if value != value:  # NaN
            return "n/a"
        if abs(value) >= 100:
            return f"{value:.0f}"
        if abs(value) >= 10:
            return f"{value:.1f}"
        return f"{value:.2f}"
    return str(value)


def target_line(name: str, measured: float, op: str, target: float, detail: str) -> bool:
    """Print one target check as ``PASS``/``MISS`` and return whether it passed."""
    ok = measured <= target if op == "<=" else measured >= target
    verdict = "PASS" if ok else "MISS"
    print(f"{verdict}  {name}: {measured:.2f} (target {op} {target:g})  [{detail}]")
    return ok


def machine() -> str:
    """One line naming the machine and interpreter, for the top of every report."""
    cpu = platform.processor() or "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    return (
        f"{when}; {os.cpu_count()} CPUs ({cpu}); Python {platform.python_version()} "
        f"({platform.python_implementation()}); {platform.system()} {platform.release()}"
    )


def rss_kib(pid: int | None = None) -> int:
    """Resident set size of ``pid`` (default: this process) in KiB, from /proc."""
    path = f"/proc/{pid or os.getpid()}/status"
    with open(path) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS in {path}")


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``predicate`` until true; raise ``TimeoutError`` naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} did not happen within {timeout}s")
        time.sleep(0.005)
