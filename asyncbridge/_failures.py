"""Failure and refusal logs that do not flood: the first of a kind in full, then summaries.

A destination that is down makes every coroutine that calls it fail the same way; one ERROR line
with a traceback each would write 3,000 tracebacks in a 30-second outage at 100 req/s. Instead,
:class:`Summaries` logs the first failure of each (lane, qualified name, exception type) with its
traceback, counts the rest, and writes one line per interval for each coroutine name that had
more, with counts by exception type::

    asyncbridge task post_json failed 1,234 times in the last 10 s: ClientConnectorError x1,200,
    ClientResponseError(503) x34

Refused coroutines (``dropped``) go through the same mechanism and the same interval, so the two
kinds of line look and behave alike. A kind that stays quiet for a whole interval is logged in
full again the next time it happens.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from ._log import logger

__all__ = ["Summaries", "failure_kind"]

# Timer callbacks may fire this much before the window's end (loop clock resolution).
_EARLY = 0.001


def failure_kind(exc: BaseException) -> str:
    """How an exception is counted in a summary: its type, and its HTTP status when it has one.

    aiohttp's ``ClientResponseError`` (and anything else with an integer ``status``) reads as
    ``ClientResponseError(503)``, so that a summary tells a 503 from a 429.
    """
    name = type(exc).__name__
    status = getattr(exc, "status", None)
    if isinstance(status, int) and not isinstance(status, bool):
        return f"{name}({status})"
    return name


def _seconds(value: float) -> str:
    return f"{value:.3g} s"


def _literal(text: str) -> str:
    """``text`` made safe to sit in a str.format template."""
    return text.replace("{", "{{").replace("}", "}}")


def _counts(kinds: dict[str, int]) -> str:
    ordered = sorted(kinds.items(), key=lambda kv: (-kv[1], kv[0]))
    return ", ".join(f"{kind} x{n:,}" for kind, n in ordered)


class _Group:
    """One summary line's worth of counts: what failed (or was dropped), by kind."""

    __slots__ = ("counts", "level", "suppressed", "template")

    def __init__(self, template: str, level: int) -> None:
        # "... failed {n} times in the last {elapsed}: {counts}"
        self.template = template
        self.level = level
        self.counts: dict[str, int] = {}
        self.suppressed = 0  # events in this window that were not logged in full


class Summaries:
    """Counts failures and refusals and logs them without flooding. Thread-safe.

    Args:
        interval: Seconds between two summary lines of one group (the ``log_interval`` option),
            or a function that returns them (read each time, so that configure() acts at once).
        clock: A monotonic clock, for tests.
        log: The logger to write to.
    """

    def __init__(
        self,
        interval: float | Callable[[], float] = 10.0,
        *,
        clock: Callable[[], float] = time.monotonic,
        log: logging.Logger = logger,
    ) -> None:
        self._interval = interval
        # Set by the runtime: schedule(delay) arranges a call of flush() after ``delay`` seconds
        # (on the loop). Without it, a window is summarised by the next event after its end, or
        # by flush(final=True) at shutdown.
        self.schedule: Callable[[float], object] | None = None
        self._clock = clock
        self._log = log
        # Reentrant: a signal handler may refuse work while the frame it interrupted is counting.
        self._lock = threading.RLock()
        self._groups: dict[tuple[str, ...], _Group] = {}
        self._window_start: float | None = None
        self._armed = False
        # The last time each kind was seen; a kind not seen for an interval is logged in full.
        self._seen: dict[tuple[str, ...], float] = {}

    @property
    def interval(self) -> float:
        """Seconds between two summary lines of one group."""
        interval = self._interval
        return interval() if callable(interval) else interval

    def failure(
        self, name: str, exc: BaseException, *, lane: str = "default", timed_out: bool = False
    ) -> None:
        """Count one failed (or timed-out) coroutine; log it in full if it is the first of its kind.

        Args:
            name: The coroutine's qualified name.
            exc: What it raised (a ``TimeoutError`` for a timed-out one).
            lane: The lane it ran in.
            timed_out: It ran past ``task_timeout``.
        """
        where = "" if lane == "default" else f" in lane {lane!r}"
        kind = "timed out" if timed_out else failure_kind(exc)
        first_key = ("failed", lane, name, "timed out" if timed_out else type(exc).__qualname__)
        full = self._note(
            ("failed", lane, name),
            kind,
            first_key,
            template=f"asyncbridge task {_literal(name + where)} failed "
            "{n} times in the last {elapsed}: {counts}",
            level=logging.ERROR,
        )
        if full:
            more = f"more like it are summarised once per {_seconds(self.interval)}"
            if timed_out:
                self._log.error("asyncbridge task %s%s timed out: %s (%s)", name, where, exc, more)
            else:
                self._log.error(
                    "asyncbridge task %s%s failed (%s)", name, where, more, exc_info=exc
                )

    def drop(self, name: str, reason: str, why: str, total: int, *, lane: str = "default") -> None:
        """Count one refused coroutine (or batch item); warn in full about the first of a reason.

        Args:
            name: The coroutine's qualified name (a batcher's flush function for an item).
            reason: ``"full"`` or ``"closed"``.
            why: Said in the warning: "the backlog is full (10000 pending)".
            total: How many were dropped for this reason so far, this one included.
            lane: The lane that refused it.
        """
        where = "" if lane == "default" else f"lane {lane!r} "
        full = self._note(
            ("dropped", lane, reason),
            name,
            ("dropped", lane, reason),
            template=f"asyncbridge {_literal(where)}dropped {{n}} in the last {{elapsed}}, because "
            f"{_literal(why)}: "
            "{counts}",
            level=logging.WARNING,
        )
        if full:
            self._log.warning(
                "asyncbridge %sdropped %s: %s (%s dropped for this reason so far; more are "
                "summarised once per %s)",
                where,
                name,
                why,
                f"{total:,}",
                _seconds(self.interval),
            )

    def flush(self, *, final: bool = False) -> None:
        """Write the summary lines of a window that has ended (every window, when ``final``)."""
        now = self._clock()
        with self._lock:
            self._armed = False
            start = self._window_start
            if start is None:
                return
            remaining = start + self.interval - now
            if not final and remaining > _EARLY:
                lines, rearm = [], remaining
            else:
                lines, rearm = self._roll(now), 0.0
            if rearm and self._suppressed_any():
                self._armed = True
            else:
                rearm = 0.0
        self._write(lines)
        if rearm:
            self._ask(rearm)

    # -- inside -------------------------------------------------------------------------------

    def _note(
        self,
        group_key: tuple[str, ...],
        kind: str,
        first_key: tuple[str, ...],
        *,
        template: str,
        level: int,
    ) -> bool:
        """Count one event; True when it is to be logged in full (the caller does that)."""
        now = self._clock()
        arm = 0.0
        with self._lock:
            lines: list[tuple[int, str]] = []
            start = self._window_start
            if start is not None and now - start >= self.interval - _EARLY:
                lines = self._roll(now)
                start = None
            if start is None:
                self._window_start = start = now
            group = self._groups.get(group_key)
            if group is None:
                group = self._groups[group_key] = _Group(template, level)
            group.counts[kind] = group.counts.get(kind, 0) + 1
            last = self._seen.get(first_key)
            full = last is None or now - last >= self.interval
            self._seen[first_key] = now
            if not full:
                group.suppressed += 1
                if not self._armed and self.schedule is not None:
                    self._armed = True
                    arm = max(0.0, start + self.interval - now)
        self._write(lines)
        if arm:
            self._ask(arm)
        return full

    def _suppressed_any(self) -> bool:
        return any(g.suppressed for g in self._groups.values())

    def _roll(self, now: float) -> list[tuple[int, str]]:
        """Close the window (lock held): one line per group that had events not logged in full."""
        start = self._window_start
        assert start is not None
        elapsed = _seconds(max(0.0, now - start))
        lines = []
        for group in self._groups.values():
            if not group.suppressed:
                continue
            n = sum(group.counts.values())
            text = group.template.format(n=f"{n:,}", elapsed=elapsed, counts=_counts(group.counts))
            lines.append((group.level, text))
        self._groups = {}
        self._window_start = None
        # Forget kinds quiet for an interval, so the table stays as small as the set of kinds.
        horizon = now - self.interval
        self._seen = {k: t for k, t in self._seen.items() if t > horizon}
        return lines

    def _write(self, lines: list[tuple[int, str]]) -> None:
        for level, line in lines:
            self._log.log(level, "%s", line)

    def _ask(self, delay: float) -> None:
        schedule = self.schedule
        if schedule is None:
            return
        try:
            schedule(delay)
        except RuntimeError:  # the loop is closed: the final flush at shutdown writes the rest
            with self._lock:
                self._armed = False
