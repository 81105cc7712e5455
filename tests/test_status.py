"""``python -m asyncbridge status``: one line per live worker and totals, from the directory."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from asyncbridge import _status
from asyncbridge._publish import read_directory

from .helpers import FORK_WARNING, ROOT
from .status_dirs import counts, env_with_status_dir, run_python, workers_directory

# The fixtures fork this (threaded) process; Python 3.12+ warns about exactly that.
pytestmark = pytest.mark.filterwarnings(FORK_WARNING)


@pytest.fixture
def directory(tmp_path: Path) -> Iterator[Path]:
    """One live worker (this process), one killed and counted, one killed and not counted."""
    live = counts(accepted=12, completed=7, failed=1, pending=1, running=3, dropped_full=2)
    with workers_directory(tmp_path, live, stalls=1, longest_stall=1.5) as directory:
        yield directory


def _table(text: str) -> dict[str, list[str]]:
    rows = {}
    for line in text.splitlines()[2:]:
        cells = line.split()
        if cells and cells[0] not in ("gone:",):
            rows[cells[0]] = cells[1:]
    return rows


def test_the_table_has_a_line_per_worker_and_totals(directory: Path) -> None:
    view = read_directory(str(directory))
    text = _status.render(view)
    lines = text.splitlines()
    assert "1 live, 1 gone and not yet counted, 1 exited and counted" in lines[0]
    assert lines[1].split() == [
        "PID",
        "STATE",
        "UPDATED",
        "ACCEPTED",
        "PENDING",
        "RUNNING",
        "COMPLETED",
        "FAILED",
        "DROPPED",
        "STALLS",
        "LOST",
    ]
    rows = _table(text)
    me = rows[str(os.getpid())]
    assert me[0] == "running" and me[2:] == ["12", "1", "3", "7", "1", "2", "1", "-"]
    (gone_pid,) = [r.pid for r in view.dead]
    assert rows[str(gone_pid)][0] == "gone"
    assert rows[str(gone_pid)][2:] == ["7", "0", "6", "1", "0", "0", "0", "6"]
    assert rows["exited(1)"] == ["1", "undr.", "5", "-", "-", "1", "0", "0", "0", "4"]
    # Totals: every worker's counters, the live ones' pending and running, all that was lost.
    assert rows["TOTAL"] == ["24", "1", "3", "9", "1", "2", "1", "10"]


def test_the_command_reads_the_directory_from_a_flag_or_the_environment(directory: Path) -> None:
    by_env = run_python(["-m", "asyncbridge", "status"], env=env_with_status_dir(directory))
    by_flag = run_python(["-m", "asyncbridge", "status", "--dir", str(directory), "--lanes"])
    assert by_env.returncode == by_flag.returncode == 0, by_env.stderr + by_flag.stderr
    assert _table(by_env.stdout)["TOTAL"] == ["24", "1", "3", "9", "1", "2", "1", "10"]
    assert "LANE" in by_flag.stdout
    # The lane table has no stalls column (a stall holds every lane of its process).
    assert _table(by_flag.stdout)["default"] == ["24", "1", "3", "9", "1", "2", "10"]


def test_json_output_has_the_same_figures(directory: Path) -> None:
    done = run_python(["-m", "asyncbridge", "status", "--dir", str(directory), "--json"])
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert data["total"]["accepted"] == 24 and data["total"]["lost"] == 10
    assert data["total"]["stalls"] == 1
    alive = {w["pid"]: w["alive"] for w in data["workers"]}
    assert alive[os.getpid()] is True and sorted(alive.values()) == [False, True]


def test_without_a_directory_it_says_where_to_point_it(tmp_path: Path) -> None:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("ASYNCBRIDGE_STATUS_DIR", "PROMETHEUS_MULTIPROC_DIR")
    }
    done = run_python(["-m", "asyncbridge", "status"], env=env)
    assert done.returncode == 2
    assert "no status directory: pass --dir, or set ASYNCBRIDGE_STATUS_DIR" in done.stderr
    missing = run_python(["-m", "asyncbridge", "status", "--dir", str(tmp_path / "nope")])
    assert missing.returncode == 2 and "does not exist" in missing.stderr


def test_watch_refreshes_until_ctrl_c(directory: Path) -> None:
    with subprocess.Popen(
        [
            sys.executable,
            "-m",
            "asyncbridge",
            "status",
            "--dir",
            str(directory),
            "--watch",
            "--interval",
            "0.1",
        ],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    ) as proc:
        assert proc.stdout is not None
        frames = 0
        deadline = time.monotonic() + 30
        while frames < 3 and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if line.startswith("\x1b[H\x1b[2J"):  # each refresh clears the screen first
                frames += 1
        proc.send_signal(signal.SIGINT)
        proc.stdout.read()
        assert proc.wait(10) == 0
    assert frames == 3
