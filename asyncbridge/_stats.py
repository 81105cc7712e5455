"""Snapshots of a bridge's accounting: :class:`Stats` and :class:`ShutdownReport`."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

__all__ = ["ShutdownReport", "Stats"]


@dataclass(frozen=True, slots=True)
class Stats:
    """A consistent snapshot of one bridge in one process.

    The invariant ``accepted == completed + failed + timed_out + cancelled + pending + running``
    holds in every snapshot. Dropped work was never accepted, so it is outside that sum.

    Attributes:
        accepted: Coroutines taken on by ``run_soon``/``submit``/``run``.
        completed: Finished without an exception.
        failed: Raised an exception.
        timed_out: Cancelled because they ran past ``task_timeout``.
        cancelled: Cancelled before finishing: at shutdown, or by the caller (``run`` timeout,
            ``Future.cancel``).
        pending: Accepted and waiting to start (the backlog).
        running: Started and not finished.
        dropped: Refused coroutines by reason: ``"full"`` (backlog at ``max_pending``) and
            ``"closed"`` (handed over after shutdown).
        pid: The process these numbers belong to.
        loop_running: Whether this process's loop thread is alive.
        loop_restarts: Times something other than shutdown called ``loop.stop()`` on the bridge
            loop; each time the loop resumed at once and nothing was lost (each is logged).
        retries: Tries that :func:`asyncbridge.retrying` made again after a failure worth
            retrying (the first try of each job is not a retry).
        lanes: Each lane's own snapshot, by name, ``"default"`` included (the total's only: a
            lane's snapshot has no lanes). The figures above are their sum.
        stalls: Episodes in which the loop had no turn for ``stall_warning`` seconds or more
            (each logged when it starts and when it ends).
        longest_stall: The longest of those episodes so far, in seconds, the one in progress
            included.
    """

    accepted: int = 0
    completed: int = 0
    failed: int = 0
    timed_out: int = 0
    cancelled: int = 0
    pending: int = 0
    running: int = 0
    dropped: Mapping[str, int] = field(default_factory=lambda: {"full": 0, "closed": 0})
    pid: int = 0
    loop_running: bool = False
    loop_restarts: int = 0
    retries: int = 0
    lanes: Mapping[str, Stats] = field(default_factory=dict)
    stalls: int = 0
    longest_stall: float = 0.0

    @property
    def dropped_total(self) -> int:
        """All dropped coroutines, whatever the reason."""
        return sum(self.dropped.values())


@dataclass(frozen=True, slots=True)
class ShutdownReport:
    """What :func:`asyncbridge.shutdown` did, for the log and for tests.

    Attributes:
        stats: The final accounting of this process's bridge.
        cancelled_names: Qualified names of the coroutines cancelled at the deadline (never their
            arguments, which may carry secrets).
        abandoned: Coroutines still pending or running when shutdown ended: the loop was blocked
            by synchronous code, or a coroutine ignored its cancellation. They are lost with the
            process.
        abandoned_names: Qualified names of the abandoned coroutines.
        elapsed: Seconds the shutdown took.
        timeout: The drain deadline it was given, in seconds.
        final: False for an interim report: returned to a caller that could not wait for the
            shutdown in progress (another thread's, or the one a signal handler interrupted, or
            a call from the loop thread itself). Its figures are true at the time it was made,
            but work may still finish or be cancelled; the final report is logged when that
            shutdown ends, and later calls return it.
    """

    stats: Stats
    cancelled_names: tuple[str, ...] = ()
    abandoned: int = 0
    elapsed: float = 0.0
    timeout: float = 0.0
    abandoned_names: tuple[str, ...] = ()
    final: bool = True

    @property
    def clean(self) -> bool:
        """Whether everything accepted finished by itself (nothing cancelled or abandoned).

        Always False for an interim report (``final`` is False): nothing is settled yet.
        """
        return self.final and not self.cancelled_names and not self.abandoned

    def __str__(self) -> str:
        s = self.stats
        what = "shutdown" if self.final else "shutdown in progress (interim report, not final)"
        parts = [
            f"asyncbridge {what} of pid {s.pid} in {self.elapsed:.3f}s"
            f" (deadline {self.timeout:g}s):",
            f"accepted={s.accepted} completed={s.completed} failed={s.failed}"
            f" timed_out={s.timed_out} cancelled={s.cancelled}",
            f"dropped_full={s.dropped.get('full', 0)} dropped_closed={s.dropped.get('closed', 0)}",
        ]
        if s.retries:
            parts.append(f"retries={s.retries}")
        if len(s.lanes) > 1:  # each lane that was used, apart
            parts.extend(
                f"| lane {name}: {_figures(lane)}"
                for name, lane in s.lanes.items()
                if lane.accepted or lane.dropped_total
            )
        if self.abandoned:
            parts.append(
                f"abandoned={self.abandoned} (still running at the end: a blocked loop or a "
                "coroutine that ignored cancellation)"
            )
            if self.abandoned_names:
                parts.append("abandoned: " + _summarize(self.abandoned_names))
        if self.cancelled_names:
            parts.append("cancelled at the deadline: " + _summarize(self.cancelled_names))
        return " ".join(parts)


def _figures(s: Stats) -> str:
    """One lane's figures, for the report's breakdown."""
    text = (
        f"accepted={s.accepted} completed={s.completed} failed={s.failed}"
        f" timed_out={s.timed_out} cancelled={s.cancelled}"
        f" dropped_full={s.dropped.get('full', 0)} dropped_closed={s.dropped.get('closed', 0)}"
    )
    return f"{text} retries={s.retries}" if s.retries else text


def _summarize(names: tuple[str, ...]) -> str:
    counts: dict[str, int] = {}
    for name in names:
        counts[name] = counts.get(name, 0) + 1
    return ", ".join(f"{name} x{n}" if n > 1 else name for name, n in counts.items())
