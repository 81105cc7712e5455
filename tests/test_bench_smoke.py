"""Each benchmark under bench/ runs from its one command and prints its tables with every row.

Smoke runs only (``--smoke``: tiny sizes, a few seconds). Nothing here asserts on timings: the
targets' PASS/MISS lines are checked for presence, never for their verdict. Where a benchmark
reports exact accounting (every hand-off accepted or dropped, every accepted notification
received after a graceful stop), the smoke run checks those counts.
"""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from tests.e2e.procs import ROOT

BENCH = ROOT / "bench"


def run_bench(script: str, *args: str, timeout: float = 100) -> str:
    """Run ``bench/<script> --smoke`` and return its stdout; fail with its output if it fails."""
    proc = subprocess.run(
        [sys.executable, str(BENCH / script), "--smoke", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )
    assert proc.returncode == 0, f"{script} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def table_rows(out: str, title: str) -> dict[str, list[str]]:
    """The rows of the Markdown table under ``### <title>``, keyed by their first cell."""
    start = out.index(f"### {title}")
    lines: list[str] = []
    for line in out[start:].splitlines()[1:]:
        if line.startswith("|"):
            lines.append(line)
        elif lines:
            break
    rows: dict[str, list[str]] = {}
    for line in lines[2:]:  # after the header and its separator
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows.setdefault(cells[0], cells[1:])
    return rows


def verdicts(out: str) -> list[str]:
    return re.findall(r"^(PASS|MISS)  ", out, flags=re.MULTILINE)


HANDOFF_ROWS = {
    "asyncbridge.run_soon",
    "asyncbridge.submit",
    "call_soon_threadsafe(create_task, coro) (naive)",
    "asyncio.run_coroutine_threadsafe",
    "anyio BlockingPortal.start_task_soon",
    "ThreadPoolExecutor.submit",
    "threading.Thread per call",
    "call_soon_threadsafe(noop) (bare wake-up)",
    "floor: create the coroutine",
}


def test_handoff_prints_every_row_in_all_four_tables_and_six_target_checks() -> None:
    out = run_bench("handoff.py")
    assert set(table_rows(out, "burst (loop running)")) == HANDOFF_ROWS
    assert set(table_rows(out, "paced (idle loop woken per call)")) == HANDOFF_ROWS
    assert set(table_rows(out, "caller only (loop parked)")) == {
        "asyncbridge.run_soon",
        "asyncbridge.submit",
        "call_soon_threadsafe(create_task, coro) (naive)",
        "asyncio.run_coroutine_threadsafe",
        "call_soon_threadsafe(noop) (bare wake-up)",
        "floor: create the coroutine",
    }
    end_to_end = table_rows(
        out, "end to end: CPU per no-op job, burst of 2000, first hand-off to last job done"
    )
    assert set(end_to_end) == {
        "asyncbridge run_soon",
        "call_soon_threadsafe(create_task, coro) (naive)",
    }
    assert len(verdicts(out)) == 6


def test_hotpath_times_run_soon_its_pieces_and_the_prototypes() -> None:
    out = run_bench("hotpath.py")
    rows = table_rows(out, "run_soon hot path")
    assert "bridge.run_soon(job())  (the method)" in rows
    assert "prototype FoldedChecksBridge.run_soon(job())" in rows
    assert "piece: os.getpid()" in rows
    assert len(rows) == 11
    assert len(verdicts(out)) == 3


def test_publish_delay_reports_every_load_for_each_hand_off() -> None:
    out = run_bench("publish_delay.py")
    start = out.index("### publish delay")
    lines = [
        ln
        for ln in out[start:].splitlines()
        if ln.startswith("| ") and not ln.startswith("| load ")
    ]
    # 3 loads x 4 hand-offs, each row with a positive job count.
    assert len(lines) == 12
    for line in lines:
        jobs = int(line.strip("|").split("|")[2])
        assert jobs > 0
    assert len(verdicts(out)) == 2


def test_memory_accounts_for_every_hand_off_against_a_silent_sink() -> None:
    out = run_bench("memory.py")
    rows = table_rows(out, "RSS per 10,000 pending jobs")
    assert set(rows) == {
        "floor: the coroutine objects alone",
        "asyncbridge.run_soon",
        "asyncbridge.submit",
        "call_soon_threadsafe(create_task, coro) (naive)",
        "asyncio.run_coroutine_threadsafe",
    }
    sent, accepted, dropped = map(
        int,
        re.search(  # type: ignore[union-attr]
            r"handed off (\d+) = accepted (\d+) \+ dropped \(full\) (\d+)", out
        ).groups(),
    )
    # Smoke: 3 s at 500/s with max_pending=500, so the backlog fills and drops are counted.
    assert sent == accepted + dropped
    assert dropped > 0
    assert len(verdicts(out)) == 3


@pytest.mark.e2e
def test_seed_scenario_delivers_every_accepted_notification_after_a_graceful_stop() -> None:
    out = run_bench("seed_scenario.py", "--modes", "ceiling,asyncbridge", "--no-wrk")
    for title in ("saturation (closed loop, 8 connections)", "fixed rate 300 req/s"):
        rows = table_rows(out, title)
        assert set(rows) == {
            "no notification (ceiling)",
            "asyncbridge.run_soon + aiohttp helper",
        }
        received, accepted = map(int, rows["asyncbridge.run_soon + aiohttp helper"][4].split("/"))
        assert accepted > 0
        assert received == accepted


def test_loop_cost_prints_both_tables_and_three_target_checks() -> None:
    out = run_bench("loop_cost.py")
    end_to_end = table_rows(out, "End to end: CPU per no-op job, first hand-off to last job done")
    assert set(end_to_end) == {"asyncbridge run_soon", "call_soon_threadsafe(create_task)"}
    blocked = table_rows(out, "A burst against a loop blocked by its own work (back-off as it is)")
    assert set(blocked) == {
        f"{row} (collector {state})"
        for row in ("floor", "lower bound: keep (coro, copy_context())", "run_soon, loop blocked")
        for state in ("on", "off")
    }
    assert len(verdicts(out)) == 3


def test_django_enqueue_accounts_for_every_task_and_checks_two_targets() -> None:
    out = run_bench("django_enqueue.py")
    assert "bridge accounting: accepted=180 completed=180 failed=0" in out
    assert len(verdicts(out)) == 2
