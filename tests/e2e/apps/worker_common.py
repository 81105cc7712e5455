"""What every task-worker test app shares: the hand-off under test, and a ledger of hand-offs.

A task calls :func:`hand_off`, which hands one ``post_json`` to the sink to the bridge and writes
one line to the ledger file: the task's id, the process, and whether the bridge accepted it. The
ledger is the ground truth of what the workers accepted, with or without an adapter (a control
run has no shutdown report to read), and it shows a task that ran twice. Lines are written with
one ``O_APPEND`` write each, so processes never interleave them.

Environment:
    ABTEST_SINK_URL: Where the notifications go.
    ABTEST_LEDGER: The ledger file.
    ABTEST_ADAPTER: ``1`` (default) wires the adapter under test; ``0`` is the control run.
    ABTEST_REDIS_URL: The test's Redis, for the apps that need a broker.
"""

from __future__ import annotations

import collections
import os
from dataclasses import dataclass
from pathlib import Path

import asyncbridge
import asyncbridge.aiohttp
from asyncbridge.aiohttp import post_json

__all__ = ["ADAPTER", "REDIS_URL", "Ledger", "environment", "hand_off", "read_ledger", "record"]

SINK_URL = os.environ.get("ABTEST_SINK_URL", "")
LEDGER = os.environ.get("ABTEST_LEDGER", "")
REDIS_URL = os.environ.get("ABTEST_REDIS_URL", "")
ADAPTER = os.environ.get("ABTEST_ADAPTER", "1") == "1"

if LEDGER:  # in the worker processes only; the test process imports this module too
    # Sized for the tests: a process may hold a few hundred posts to a sink that answers after
    # seconds. With the defaults (100 running, 100 connections) the rest would wait behind them,
    # and the drain deadline would cancel them (counted, and named in the report).
    asyncbridge.configure(max_concurrency=1000)
    asyncbridge.aiohttp.configure(limit=1000)


def environment(*, redis_url: str, sink_url: str, ledger: Path, adapter: bool) -> dict[str, str]:
    """The variables above, for a test to pass to the worker processes it starts."""
    return {
        "ABTEST_REDIS_URL": redis_url,
        "ABTEST_SINK_URL": sink_url,
        "ABTEST_LEDGER": str(ledger),
        "ABTEST_ADAPTER": "1" if adapter else "0",
    }


def record(task_id: str, accepted: bool) -> None:
    """Append ``task_id pid accepted`` to the ledger in one write."""
    line = f"{task_id} {os.getpid()} {int(accepted)}\n".encode()
    fd = os.open(LEDGER, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def hand_off(task_id: str) -> bool:
    """The work under test: hand a notification to the bridge, record the outcome."""
    accepted = asyncbridge.run_soon(post_json(SINK_URL, {"id": task_id}))
    record(task_id, accepted)
    return accepted


@dataclass(frozen=True)
class Ledger:
    """A ledger file, read back by a test."""

    runs: collections.Counter[str]  # how often each task ran
    accepted: frozenset[str]  # task ids whose hand-off the bridge accepted
    pids: frozenset[int]  # processes that ran tasks

    @property
    def lines(self) -> int:
        """Every task run, repeats included."""
        return sum(self.runs.values())


def read_ledger(path: Path) -> Ledger:
    """Read a ledger; a missing file is an empty ledger."""
    runs: collections.Counter[str] = collections.Counter()
    accepted: set[str] = set()
    pids: set[int] = set()
    text = path.read_text() if path.exists() else ""
    for line in text.splitlines():
        task_id, pid, ok = line.split()
        runs[task_id] += 1
        pids.add(int(pid))
        if ok == "1":
            accepted.add(task_id)
    return Ledger(runs, frozenset(accepted), frozenset(pids))
