"""``python -m asyncbridge status``: what every worker published, one line each, and totals."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from typing import Any, TextIO

from ._publish import (
    ENV_PROMETHEUS_DIR,
    ENV_STATUS_DIR,
    DirectoryView,
    LaneRecord,
    ProcessRecord,
    read_directory,
    resolve_directory,
)

__all__ = ["COLUMNS", "main", "render", "to_json"]

COLUMNS = (
    "accepted",
    "pending",
    "running",
    "completed",
    "failed",
    "dropped",
    "stalls",
    "lost",
)
_CLEAR = "\x1b[H\x1b[2J"


def _row(label: str, state: str, seen: str, values: Sequence[object]) -> str:
    cells = "".join(f"{v!s:>11}" for v in values)
    return f"{label:<10}{state:<10}{seen:>9}{cells}"


def _figures(lane: LaneRecord, stalls: object, lost: object) -> list[object]:
    c = lane.counts
    return [
        c["accepted"],
        c["pending"],
        c["running"],
        c["completed"],
        c["failed"],
        sum(lane.dropped.values()),
        stalls,
        lost,
    ]


def _age(seconds: float) -> str:
    if seconds < 0:
        seconds = 0.0
    if seconds < 60:
        return f"{seconds:.1f}s"
    if seconds < 3600:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.0f}h"


def render(view: DirectoryView, *, now: float | None = None, lanes: bool = False) -> str:
    """The status table of a directory: live workers, gone ones not yet counted, totals."""
    now = time.time() if now is None else now
    clock = time.strftime("%H:%M:%S", time.localtime(now))
    lines = [
        f"asyncbridge status of {view.directory} at {clock}: {len(view.live)} live,"
        f" {len(view.dead)} gone and not yet counted, {view.exited.processes} exited and counted",
        _row("PID", "STATE", "UPDATED", [c.upper() for c in COLUMNS]),
    ]

    def proc_line(rec: ProcessRecord, state: str, lost: object) -> str:
        stalls: object = rec.stalls
        if rec.stalled_since:
            stalls = f"{rec.stalls}!"  # a stall in progress
        return _row(
            str(rec.pid), state, _age(now - rec.updated), _figures(rec.total(), stalls, lost)
        )

    lines.extend(proc_line(r, r.state_name, "-") for r in sorted(view.live, key=lambda r: r.pid))
    lines.extend(
        proc_line(r, "gone", r.total().unfinished) for r in sorted(view.dead, key=lambda r: r.pid)
    )
    exited_total = LaneRecord()
    for lane_rec in view.exited.lanes.values():
        exited_total.add(lane_rec)
    ex = view.exited
    if ex.processes:
        label = f"exited({ex.processes})"
        figures = _figures(exited_total, ex.stalls, exited_total.lost)
        figures[1] = figures[2] = "-"  # a process that is gone has nothing pending or running
        lines.append(_row(label, f"{ex.undrained} undr." if ex.undrained else "", "", figures))
    total = LaneRecord()
    for lane in view.lanes().values():
        total.add(lane)
    live_pending = sum(r.total().counts["pending"] for r in view.live)
    live_running = sum(r.total().counts["running"] for r in view.live)
    figures = _figures(total, _stalls(view), total.lost)
    figures[1], figures[2] = live_pending, live_running
    lines.append(_row("TOTAL", "", "", figures))
    if lanes:
        lines.append("")
        lines.append(_row("LANE", "", "", [c.upper() for c in COLUMNS]))
        for name, lane in sorted(view.lanes().items()):
            live = [r.lanes[name] for r in view.live if name in r.lanes]
            figures = _figures(lane, "", lane.lost)
            figures[1] = sum(x.counts["pending"] for x in live)
            figures[2] = sum(x.counts["running"] for x in live)
            lines.append(_row(name[:10], "", "", figures))
    if view.dead:
        lines.append(
            "gone: ended without being counted yet (no master counted them); their pending and "
            "running work is lost"
        )
    return "\n".join(lines) + "\n"


def _stalls(view: DirectoryView) -> int:
    return view.exited.stalls + sum(r.stalls for r in view.live + view.dead)


def to_json(view: DirectoryView) -> dict[str, Any]:
    """The same figures as :func:`render`, for scripts."""

    def proc(rec: ProcessRecord, alive: bool) -> dict[str, Any]:
        total = rec.total()
        return {
            "pid": rec.pid,
            "alive": alive,
            "state": rec.state_name,
            "updated": rec.updated,
            "stalls": rec.stalls,
            "longest_stall": rec.longest_stall,
            "stalled_since": rec.stalled_since or None,
            **total.counts,
            "lost": 0 if alive else total.unfinished,
            "lanes": {name: lane.counts for name, lane in rec.lanes.items()},
        }

    lanes = view.lanes()
    total = LaneRecord()
    for lane in lanes.values():
        total.add(lane)
    return {
        "directory": view.directory,
        "workers": [proc(r, True) for r in view.live] + [proc(r, False) for r in view.dead],
        "exited": view.exited.to_json(),
        "total": {**total.counts, "lost": total.lost, "stalls": _stalls(view)},
        "lanes": {name: {**lane.counts, "lost": lane.lost} for name, lane in lanes.items()},
    }


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    """``python -m asyncbridge status [--dir DIR] [--watch] [--interval S] [--lanes] [--json]``.

    Returns:
        The exit status: 0, or 2 when no status directory is known.
    """
    out = out or sys.stdout
    parser = argparse.ArgumentParser(
        prog="python -m asyncbridge",
        description="Look at what the asyncbridge loops of a service's workers publish.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    status = sub.add_parser(
        "status",
        help="one line per live worker, and totals",
        description="One line per live worker and totals: accepted, pending, running, "
        "completed, failed, dropped, stalls, lost.",
    )
    status.add_argument(
        "--dir",
        help=f"the status directory (default: ${ENV_STATUS_DIR}, else ${ENV_PROMETHEUS_DIR})",
    )
    status.add_argument("--watch", action="store_true", help="refresh like top, until Ctrl-C")
    status.add_argument("--interval", type=float, default=1.0, help="seconds between refreshes")
    status.add_argument("--lanes", action="store_true", help="also show totals per lane")
    status.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    directory = resolve_directory(args.dir)
    if directory is None:
        print(
            f"asyncbridge status: no status directory: pass --dir, or set {ENV_STATUS_DIR} "
            f"(or {ENV_PROMETHEUS_DIR}) as the server was started with",
            file=sys.stderr,
        )
        return 2
    if not os.path.isdir(directory):
        print(f"asyncbridge status: {directory} does not exist (yet)", file=sys.stderr)
        return 2
    if args.interval <= 0:
        parser.error("--interval must be greater than 0")

    def once() -> str:
        view = read_directory(directory)
        if args.json:
            return json.dumps(to_json(view), indent=2) + "\n"
        return render(view, lanes=args.lanes)

    if not args.watch:
        out.write(once())
        return 0
    try:
        while True:
            out.write(_CLEAR + once())
            out.flush()
            time.sleep(args.interval)
    except KeyboardInterrupt:
        out.write("\n")
        return 0
