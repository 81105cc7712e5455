"""The dashboard's "Background loops" panel: each gunicorn worker's asyncbridge figures.

:mod:`demo.run` starts gunicorn with ``ASYNCBRIDGE_STATUS_DIR`` set, so each worker's loop
publishes its counts in a small file there (at most once per loop turn; see the operators'
guide). The hub reads the directory twice a second with the same reader as
``python -m asyncbridge status --json`` and streams what changed to the dashboard. Reading never
touches a worker: it is a few ``pread`` calls on files the workers keep up to date.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from asyncbridge._publish import read_directory
from asyncbridge._status import to_json

__all__ = ["FIGURES", "figures"]

FIGURES = (
    "accepted",
    "pending",
    "running",
    "completed",
    "failed",
    "dropped",
    "stalls",
    "lost",
)
"""The panel's columns per worker, after the pid and the state, as ``asyncbridge status``."""


def _dropped(counts: Mapping[str, Any]) -> int:
    return sum(int(counts[key]) for key in ("dropped_full", "dropped_closed", "dropped_other"))


def figures(directory: str, received: Mapping[int, int]) -> dict[str, Any]:
    """The panel's figures: one row per worker that published in ``directory``, and totals.

    Args:
        directory: The status directory the workers were started with.
        received: Per worker pid, the pushes the hub received from that worker's loop.

    Returns:
        ``{"directory", "workers": [row, ...], "all": row, "exited": n}``. A row has ``pid``,
        ``live``, ``state``, the :data:`FIGURES`, ``stalling`` (a stall in progress) and
        ``received``. Live workers come first, by pid; a gone one stays until gunicorn's master
        has counted it (its unfinished work then shows as ``lost``). ``all`` sums every worker
        the directory has seen, those exited and counted included (``exited`` of them).
    """
    status = to_json(read_directory(directory))
    rows = []
    for w in status["workers"]:
        row = {
            "pid": w["pid"],
            "live": bool(w["alive"]),
            "state": w["state"] if w["alive"] else "gone",
            **{key: int(w[key]) for key in FIGURES if key != "dropped"},
            "dropped": _dropped(w),
            "stalling": w["stalled_since"] is not None,
            "received": int(received.get(w["pid"], 0)),
        }
        rows.append(row)
    rows.sort(key=lambda r: (not r["live"], r["pid"]))
    total = status["total"]
    live = [r for r in rows if r["live"]]
    everything = {
        **{key: int(total[key]) for key in FIGURES if key != "dropped"},
        "dropped": _dropped(total),
        # What is pending or running is in live workers only; a gone worker's is lost.
        "pending": sum(r["pending"] for r in live),
        "running": sum(r["running"] for r in live),
        "received": sum(received.values()),
    }
    return {
        "directory": status["directory"],
        "workers": rows,
        "all": everything,
        "exited": int(status["exited"]["processes"]),
    }
