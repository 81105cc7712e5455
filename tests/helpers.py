"""Shared helpers for the core tests."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncbridge
from asyncbridge import Bridge, Stats

ROOT = Path(__file__).resolve().parents[1]

# Fork tests run in threaded processes on purpose; Python 3.12+ warns about exactly that.
FORK_WARNING = "ignore:This process .* is multi-threaded, use of fork:DeprecationWarning"


def assert_invariant(stats: Stats) -> None:
    """accepted == completed + failed + timed_out + cancelled + pending + running."""
    total = (
        stats.completed
        + stats.failed
        + stats.timed_out
        + stats.cancelled
        + stats.pending
        + stats.running
    )
    assert stats.accepted == total, stats


@contextlib.contextmanager
def fresh_bridge(shutdown_timeout: float = 5, **options: Any) -> Iterator[Bridge]:
    """A bridge that is always shut down afterwards, with its invariant checked."""
    bridge = Bridge(**options)
    try:
        yield bridge
    finally:
        report = bridge.shutdown(shutdown_timeout)
        assert_invariant(report.stats)


async def sleeper(seconds: float, result: object = None) -> object:
    await asyncio.sleep(seconds)
    return result


def wait_child(pid: int, timeout: float) -> int:
    """waitpid with a deadline; a child alive at the deadline is killed and the test fails."""
    import pytest

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.01)
    os.kill(pid, 9)
    os.waitpid(pid, 0)
    pytest.fail(f"child {pid} did not exit within {timeout}s (deadlock?)")


def run_python(code: str, timeout: float = 60, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter with the project importable; bounded in time."""
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        check=False,
        **kwargs,
    )


__all__ = [
    "FORK_WARNING",
    "ROOT",
    "assert_invariant",
    "asyncbridge",
    "fresh_bridge",
    "sleeper",
    "wait_child",
]


def aiohttp_defaults() -> Iterator[None]:
    """For an autouse fixture: the test starts and ends with asyncbridge.aiohttp's default
    settings, and no session of it is left open."""
    import asyncbridge.aiohttp as ab_aiohttp

    ab_aiohttp.configure()
    yield
    ab_aiohttp.configure()
    assert [s for s, _ in list(ab_aiohttp._sessions.values()) if not s.closed] == []
