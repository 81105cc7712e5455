"""What each process publishes for the others: its counts, in a small file per process.

A process whose bridge publishes keeps a fixed-size file, ``<pid>-<n>.asyncbridge``, in the
status directory, mapped into memory (``MAP_SHARED``). The loop thread rewrites it at most once
per loop turn, after a turn that changed a count; callers never touch it. The pages outlive the
process, so after a SIGKILL whoever notices the death (gunicorn's master in ``child_exit``, or
the next process that starts a loop there) reads the last counts, tells a drained exit from a
kill by the ``state`` field, counts what was unfinished as lost and folds the figures into
``exited.json``, the directory's sums over every process gone.

Why not ``prometheus_client``'s multiprocess files: the core is standard-library only and must
count losses without it, and one ``struct.pack_into`` per loop turn costs a fraction of one
locked write per value there (figures in docs/performance.md).

File layout (little-endian): a 64-byte header, then two slots; the writer fills the slot the
header's ``seq`` does not point at, then bumps ``seq``, so a reader (or a process that died
mid-write) always has one whole, consistent slot.
"""

from __future__ import annotations

import bisect
import collections
import contextlib
import fcntl
import json
import mmap
import os
import struct
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ._log import logger

if TYPE_CHECKING:
    from ._runtime import Runtime

__all__ = [
    "COUNTERS",
    "DRAINED",
    "DRAINING",
    "DURATION_BOUNDS",
    "ENV_PROMETHEUS_DIR",
    "ENV_STATUS_DIR",
    "EXITED",
    "RUNNING",
    "WAIT_BOUNDS",
    "Claimed",
    "DirectoryView",
    "Exited",
    "Histogram",
    "LaneCounts",
    "LaneRecord",
    "ProcessRecord",
    "Publisher",
    "Timing",
    "Timings",
    "adopt_dead",
    "attach",
    "claim",
    "counts_of",
    "drained",
    "draining",
    "is_alive",
    "lanes_of",
    "loop_ended",
    "lost_message",
    "on_worker_gone",
    "publish_soon",
    "read_directory",
    "read_file",
    "record_of",
    "resolve_directory",
    "timing_wanted",
    "timings_of",
    "want_timing",
    "worker_gone",
    "write_runtime",
]

ENV_STATUS_DIR = "ASYNCBRIDGE_STATUS_DIR"
ENV_PROMETHEUS_DIR = "PROMETHEUS_MULTIPROC_DIR"
SUFFIX = ".asyncbridge"
EXITED = "exited.json"
LOCK = ".asyncbridge.lock"

# States of a process's bridge, as published.
STARTING, RUNNING, DRAINING, DRAINED = 0, 1, 2, 3
STATE_NAMES = {STARTING: "starting", RUNNING: "running", DRAINING: "draining", DRAINED: "drained"}
# Flags.
LOOP_ALIVE = 1
LOOP_DIED = 2  # the loop thread ended outside shutdown

COUNTERS = (
    "accepted",
    "completed",
    "failed",
    "timed_out",
    "cancelled",
    "pending",
    "running",
    "dropped_full",
    "dropped_closed",
    "dropped_other",
    "retries",
)
# Buckets' upper bounds in seconds (the last is +inf), as Prometheus' ``le``.
WAIT_BOUNDS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    float("inf"),
)  # fmt: skip
DURATION_BOUNDS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
    float("inf"),
)  # fmt: skip
_NB = len(WAIT_BOUNDS)
assert len(DURATION_BOUNDS) == _NB

MAGIC = b"ABST"
VERSION = 1
MAX_LANES = 32  # more lanes than this are folded into the last record, named OTHER_LANE
OTHER_LANE = "(other)"
_NAME_BYTES = 32

# magic, version, pid, ppid, start_ticks, created, seq, stalled_since, serial
_HEADER = struct.Struct("<4sIqqqdQdq")
_SEQ_OFFSET = 40
_SEQ = struct.Struct("<Q")
_STALLED_OFFSET = 48
_STALLED = struct.Struct("<d")
HEADER_SIZE = 64
# updated, state, flags, stalls, longest_stall, abandoned, nlanes
_SLOT = struct.Struct("<dIIQdQI")
SLOT_HEADER_SIZE = 64
# name, then the counters
_LANE = struct.Struct(f"<{_NAME_BYTES}s{len(COUNTERS)}Q")
LANE_SIZE = 128
SLOT_SIZE = SLOT_HEADER_SIZE + MAX_LANES * LANE_SIZE
# Histograms (wait buckets + sum, duration buckets + sum) live outside the two slots, one record
# per lane in the slots' lane order, rewritten in place at most every HISTOGRAM_EVERY seconds:
# they feed Prometheus only, where a torn or 0.1 s old read is harmless, and packing them on
# every loop turn would triple the cost of a write.
_HIST = struct.Struct(f"<{_NB}Qd{_NB}Qd")
HIST_SIZE = 256
HISTOGRAM_EVERY = 0.1
HIST_OFFSET = HEADER_SIZE + 2 * SLOT_SIZE
FILE_SIZE = HIST_OFFSET + MAX_LANES * HIST_SIZE
assert _HEADER.size <= HEADER_SIZE and _SLOT.size <= SLOT_HEADER_SIZE
assert _LANE.size <= LANE_SIZE and _HIST.size <= HIST_SIZE


def resolve_directory(configured: str | None = None) -> str | None:
    """The status directory: ``configured``, else ``$ASYNCBRIDGE_STATUS_DIR``, else
    ``$PROMETHEUS_MULTIPROC_DIR``; None when none is set (nothing is published)."""
    for candidate in (
        configured,
        os.environ.get(ENV_STATUS_DIR),
        os.environ.get(ENV_PROMETHEUS_DIR),
    ):
        if candidate:
            return candidate
    return None


# -- histograms and the loop side's timing ------------------------------------------------------


class Histogram:
    """Counts per bucket (not cumulative) and the sum of what was observed, in seconds."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * len(self.bounds)
        self.sum = 0.0

    def add(self, seconds: float, count: int = 1) -> None:
        """Observe ``seconds`` ``count`` times."""
        if seconds < 0.0:
            seconds = 0.0
        self.counts[bisect.bisect_left(self.bounds, seconds)] += count
        self.sum += seconds * count

    @property
    def count(self) -> int:
        return sum(self.counts)


class Timing:
    """Wait and run time of jobs, kept by the loop thread without reading a clock per hand-off.

    The hand-off path reads no clock for this. The loop notes, at each pull, how many items had
    been appended by then and when the first of them was handed over (the wake-up's time, which
    the hand-off path records anyway). A job's wait is counted from that first hand-off of its
    wake-up to the loop turn that starts it: exact for the first job of each wake-up, and never
    less than the truth for the others (at most one wake-up's latency more).
    """

    __slots__ = ("duration", "marks", "started", "wait")

    def __init__(self) -> None:
        self.marks: collections.deque[tuple[int, float]] = collections.deque()
        self.started: dict[object, float] = {}
        self.wait = Histogram(WAIT_BOUNDS)
        self.duration = Histogram(DURATION_BOUNDS)

    def pulled(self, appended: int, first_handoff: float) -> None:
        """A pull ran: items up to number ``appended`` were handed over from ``first_handoff``."""
        marks = self.marks
        if not marks or marks[-1][0] < appended:
            marks.append((appended, first_handoff))

    def took(self, taken_before: int, n: int, now: float, current_wakeup: float) -> None:
        """Items ``taken_before + 1 .. taken_before + n`` leave the backlog at ``now``."""
        marks = self.marks
        seq = taken_before
        end = taken_before + n
        add = self.wait.add
        while seq < end:
            if marks:
                upto, first = marks[0]
                if upto <= seq:  # a mark of items already taken
                    marks.popleft()
                    continue
                if upto <= end:
                    marks.popleft()
                else:
                    upto = end
            else:  # appended after the last pull; they belong to the wake-up now queued
                upto, first = end, current_wakeup
            add(now - first, upto - seq)
            seq = upto

    def begin(self, task: object, now: float) -> None:
        self.started[task] = now

    def end(self, task: object, now: float) -> None:
        began = self.started.pop(task, None)
        if began is not None:
            self.duration.add(now - began)


class Timings:
    """A runtime's :class:`Timing` per lane, made on a lane's first job."""

    __slots__ = ("lanes",)

    def __init__(self) -> None:
        self.lanes: dict[str, Timing] = {}

    def of(self, lane: Any) -> Timing:
        """The timing of ``lane`` (anything with a ``name``)."""
        timing = self.lanes.get(lane.name)
        if timing is None:
            timing = self.lanes[lane.name] = Timing()
        return timing


# -- records ------------------------------------------------------------------------------------


@dataclass
class LaneRecord:
    """One lane's published figures (counters as in :class:`~asyncbridge.Stats`)."""

    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(COUNTERS, 0))
    wait_counts: list[int] = field(default_factory=lambda: [0] * _NB)
    wait_sum: float = 0.0
    duration_counts: list[int] = field(default_factory=lambda: [0] * _NB)
    duration_sum: float = 0.0
    lost: int = 0  # only in the exited sums: pending + running of processes that are gone

    @property
    def dropped(self) -> dict[str, int]:
        c = self.counts
        out = {"full": c["dropped_full"], "closed": c["dropped_closed"]}
        if c["dropped_other"]:
            out["other"] = c["dropped_other"]
        return out

    @property
    def unfinished(self) -> int:
        return self.counts["pending"] + self.counts["running"]

    def add(self, other: LaneRecord) -> None:
        for name in COUNTERS:
            self.counts[name] += other.counts[name]
        for i in range(_NB):
            self.wait_counts[i] += other.wait_counts[i]
            self.duration_counts[i] += other.duration_counts[i]
        self.wait_sum += other.wait_sum
        self.duration_sum += other.duration_sum
        self.lost += other.lost

    def to_json(self) -> dict[str, Any]:
        return {
            "counts": self.counts,
            "wait_counts": self.wait_counts,
            "wait_sum": self.wait_sum,
            "duration_counts": self.duration_counts,
            "duration_sum": self.duration_sum,
            "lost": self.lost,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> LaneRecord:
        rec = cls()
        for name in COUNTERS:
            rec.counts[name] = int(data.get("counts", {}).get(name, 0))
        rec.wait_counts = [int(x) for x in data.get("wait_counts", rec.wait_counts)][:_NB]
        rec.duration_counts = [int(x) for x in data.get("duration_counts", rec.duration_counts)]
        rec.wait_counts += [0] * (_NB - len(rec.wait_counts))
        rec.duration_counts = rec.duration_counts[:_NB] + [0] * (_NB - len(rec.duration_counts))
        rec.wait_sum = float(data.get("wait_sum", 0.0))
        rec.duration_sum = float(data.get("duration_sum", 0.0))
        rec.lost = int(data.get("lost", 0))
        return rec


@dataclass
class ProcessRecord:
    """What one process last published."""

    pid: int
    ppid: int
    start_ticks: int
    serial: int
    created: float
    updated: float
    state: int
    flags: int
    stalls: int
    longest_stall: float
    stalled_since: float
    abandoned: int
    lanes: dict[str, LaneRecord]
    path: str = ""

    @property
    def state_name(self) -> str:
        return STATE_NAMES.get(self.state, f"state {self.state}")

    @property
    def drained(self) -> bool:
        return self.state == DRAINED

    def total(self) -> LaneRecord:
        out = LaneRecord()
        for lane in self.lanes.values():
            out.add(lane)
        return out


def lanes_of(stats: Any) -> dict[str, Any]:
    """Per-lane snapshots: ``stats.lanes`` when the bridge has lanes, else the total as
    ``"default"``."""
    lanes = getattr(stats, "lanes", None)
    if lanes:
        return dict(lanes)
    return {"default": stats}


def _counts_of(stats: Any) -> tuple[int, ...]:
    dropped = stats.dropped
    full = int(dropped.get("full", 0))
    closed = int(dropped.get("closed", 0))
    other = sum(int(v) for k, v in dropped.items() if k not in ("full", "closed"))
    return (
        stats.accepted,
        stats.completed,
        stats.failed,
        stats.timed_out,
        stats.cancelled,
        stats.pending,
        stats.running,
        full,
        closed,
        other,
        int(getattr(stats, "retries", 0)),
    )


def record_of(stats: Any, timing: Timing | None = None) -> LaneRecord:
    """One lane's figures as published: a ``Stats`` and, if kept, its :class:`Timing`."""
    rec = LaneRecord()
    rec.counts = dict(zip(COUNTERS, _counts_of(stats), strict=True))
    if timing is not None:
        rec.wait_counts = list(timing.wait.counts)
        rec.wait_sum = timing.wait.sum
        rec.duration_counts = list(timing.duration.counts)
        rec.duration_sum = timing.duration.sum
    return rec


_timing_wanted = False


def want_timing(*bridges: Any) -> None:
    """Time jobs (for the histograms) in loops started from now on, and in ``bridges``' loops
    already running in this process."""
    global _timing_wanted
    _timing_wanted = True
    for bridge in bridges:
        rt = getattr(bridge, "_rt", None)
        if rt is not None and rt.pid == os.getpid() and getattr(rt, "timing", 1) is None:
            rt.timing = Timings()


def timing_wanted() -> bool:
    """Whether :func:`want_timing` was called in this process (or the one it was forked from)."""
    return _timing_wanted


def timings_of(bridge: Any) -> dict[str, Timing]:
    """The :class:`Timing` per lane of ``bridge``'s loop in this process (empty if not timed)."""
    rt = getattr(bridge, "_rt", None)
    timings = getattr(rt, "timing", None)
    if timings is None or getattr(rt, "pid", None) != os.getpid():
        return {}
    return dict(timings.lanes)


# -- writing ------------------------------------------------------------------------------------


def process_start_ticks(pid: int) -> int:
    """When ``pid`` started, in clock ticks since boot (Linux); 0 where unknown."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        return int(fields[19])
    except (OSError, IndexError, ValueError):
        return 0


def _proc_state(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0]
    except (OSError, IndexError):
        return b""


def is_alive(pid: int, start_ticks: int = 0) -> bool:
    """Whether process ``pid`` (the one that started at ``start_ticks``, if known) still exists.

    A zombie counts as alive: its parent has not reaped it yet and will count it (gunicorn's
    master calls ``child_exit`` right after reaping).
    """
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    if start_ticks:
        ticks = process_start_ticks(pid)
        if ticks and ticks != start_ticks:
            return False  # the PID was reused
    return True


_serials: dict[int, int] = {}


def _nothing() -> None:
    pass


LaneCounts = tuple[int, ...]
"""A lane's counters in :data:`COUNTERS` order."""


def counts_of(stats: Any) -> LaneCounts:
    """A ``Stats`` as a :data:`LaneCounts` tuple."""
    return _counts_of(stats)


class Publisher:
    """The loop side's writer of one process's status file.

    :meth:`write` is called by the loop thread (at most once per loop turn), and by shutdown
    once the loop has stopped; a lock keeps a late loop-side write from interleaving with the
    final one, and nothing is written after :meth:`close`.
    """

    def __init__(self, directory: str) -> None:
        pid = os.getpid()
        os.makedirs(directory, exist_ok=True)
        serial = _serials.get(pid, 0)
        _serials.clear()
        _serials[pid] = serial + 1
        self.path = os.path.join(directory, f"{pid}-{serial}{SUFFIX}")
        self.directory = directory
        self.pid = pid
        self.lock = threading.Lock()
        self.closed = False
        self.queued = False  # a flush is queued on the loop for this turn
        self.flush: Callable[[], None] = _nothing  # set by attach(): the loop's write
        self.state = RUNNING
        self.flags = LOOP_ALIVE
        self.seq = 0
        self.histograms_at = 0.0  # when the histograms were last written (monotonic)
        self.catching_up = False  # a write of the histograms left out is scheduled
        self._names: dict[str, bytes] = {}
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.ftruncate(fd, FILE_SIZE)
            self.mmap = mmap.mmap(fd, FILE_SIZE, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        finally:
            os.close(fd)
        self.map = memoryview(self.mmap)  # packing into a memoryview is cheaper than into the mmap
        _SLOT.pack_into(self.map, HEADER_SIZE, time.time(), STARTING, LOOP_ALIVE, 0, 0.0, 0, 0)
        _HEADER.pack_into(
            self.map,
            0,
            MAGIC,
            VERSION,
            pid,
            os.getppid(),
            process_start_ticks(pid),
            time.time(),
            0,
            0.0,
            serial,
        )

    def _name(self, name: str) -> bytes:
        encoded = self._names.get(name)
        if encoded is None:
            encoded = self._names[name] = name.encode("utf-8", "replace")[:_NAME_BYTES]
        return encoded

    def write(
        self,
        lanes: Sequence[tuple[str, LaneCounts, Timing | None]],
        *,
        stalls: int = 0,
        longest_stall: float = 0.0,
        abandoned: int = 0,
        histograms: bool = False,
    ) -> bool:
        """Publish each lane's counters (and, every ``HISTOGRAM_EVERY`` s or when
        ``histograms``, its timing).

        Returns:
            True when timing was left out of this write (the caller writes again later).
        """
        # With a timeout: a signal handler's shutdown on the thread that is writing must not
        # wait for itself (a skipped write is made up by the next one).
        if not self.lock.acquire(timeout=0.5):
            return True
        try:
            if self.closed:
                return False
            mm = self.map
            if len(lanes) > MAX_LANES:
                lanes = _fold_lanes(lanes)
            target = HEADER_SIZE + ((self.seq + 1) & 1) * SLOT_SIZE
            offset = target + SLOT_HEADER_SIZE
            pack = _LANE.pack_into
            for name, counts, _ in lanes:
                pack(mm, offset, self._name(name), *counts)
                offset += LANE_SIZE
            now = time.monotonic()
            timed = any(t is not None for _, _, t in lanes)
            later = timed and not histograms and now - self.histograms_at < HISTOGRAM_EVERY
            if timed and not later:
                self.histograms_at = now
                offset = HIST_OFFSET
                for _, _, t in lanes:
                    if t is not None:
                        w, d = t.wait, t.duration
                        _HIST.pack_into(mm, offset, *w.counts, w.sum, *d.counts, d.sum)
                    offset += HIST_SIZE
            _SLOT.pack_into(
                mm,
                target,
                time.time(),
                self.state,
                self.flags,
                stalls,
                longest_stall,
                abandoned,
                len(lanes),
            )
            self.seq += 1
            _SEQ.pack_into(mm, _SEQ_OFFSET, self.seq)
            return later
        finally:
            self.lock.release()

    def write_stats(
        self,
        stats: Any,
        timings: Mapping[str, Timing] | None = None,
        *,
        stalls: int = 0,
        longest_stall: float = 0.0,
        abandoned: int = 0,
    ) -> None:
        """Publish a ``Stats`` (with ``lanes`` if it has them); histograms included."""
        timings = timings or {}
        lanes = [(n, _counts_of(s), timings.get(n)) for n, s in lanes_of(stats).items()]
        self.write(
            lanes,
            stalls=stalls,
            longest_stall=longest_stall,
            abandoned=abandoned,
            histograms=True,
        )

    def set_stalled(self, since: float) -> None:
        """Note a stall in progress (0 when none); written by the watchdog, outside the slots."""
        with self.lock:
            if not self.closed:
                _STALLED.pack_into(self.map, _STALLED_OFFSET, since)

    def close(self) -> None:
        """No more writes; unmap (the file stays for whoever counts this process)."""
        with self.lock:
            if self.closed:
                return
            self.closed = True
            self.map.release()
            with contextlib.suppress(BufferError):
                self.mmap.close()


def _fold_lanes(
    lanes: Sequence[tuple[str, LaneCounts, Timing | None]],
) -> list[tuple[str, LaneCounts, Timing | None]]:
    kept = list(lanes[: MAX_LANES - 1])
    rest = lanes[MAX_LANES - 1 :]
    summed = tuple(sum(values) for values in zip(*(c for _, c, _ in rest), strict=True))
    return [*kept, (OTHER_LANE, summed, None)]


# -- a runtime's publisher (the core's calls) -------------------------------------------------


def attach(rt: Runtime) -> Publisher | None:
    """At loop start: publish ``rt`` if a status directory is set, and time its jobs if anyone
    wants the figures. The first record, and the count of any dead predecessor, happen on the
    loop; a directory that cannot be written is logged and publishing is off."""
    directory = resolve_directory(rt.options.status_dir)
    if directory is not None or _timing_wanted:
        rt.timing = Timings()
    if directory is None:
        return None
    try:
        pub = Publisher(directory)
    except OSError as exc:
        logger.warning(
            "asyncbridge: cannot publish status in %s (%s); publishing is off", directory, exc
        )
        return None
    rt.publisher = pub
    loop = rt.loop
    assert loop is not None

    def flush() -> None:
        pub.queued = False
        if _write_from_loop(rt, pub) and not pub.catching_up:
            # The histograms were left out (written at most every HISTOGRAM_EVERY s): write
            # them once more then, or an idle loop would leave them behind for good.
            pub.catching_up = True
            loop.call_later(HISTOGRAM_EVERY, catch_up)

    def catch_up() -> None:
        pub.catching_up = False
        if not pub.queued:
            flush()

    pub.flush = flush
    pub.state = RUNNING
    try:
        loop.call_soon_threadsafe(flush)
        loop.call_soon_threadsafe(_adopt_quietly, directory)
    except RuntimeError:  # the loop closed at once (its thread died)
        pass
    return pub


def publish_soon(rt: Runtime) -> None:
    """On the loop: a count changed; rewrite the status file once, at the end of this turn."""
    pub = rt.publisher
    if pub is not None and not pub.queued:
        pub.queued = True
        rt.loop.call_soon(pub.flush)  # type: ignore[union-attr]


def write_runtime(rt: Runtime, pub: Publisher, *, abandoned: int = 0, final: bool = False) -> bool:
    """Write ``rt``'s counts now (the loop's flush, shutdown, the watchdog); True when its
    timing was left for a later write."""
    stats = rt.snapshot()
    timings = {} if rt.timing is None else rt.timing.lanes
    lanes = [(name, _counts_of(lane), timings.get(name)) for name, lane in lanes_of(stats).items()]
    return pub.write(
        lanes,
        stalls=stats.stalls,
        longest_stall=stats.longest_stall,
        abandoned=abandoned,
        histograms=final,
    )


def _write_from_loop(rt: Runtime, pub: Publisher) -> bool:
    """:func:`write_runtime` for the loop thread, which writes the counters itself: read them
    directly instead of building a snapshot per lane (the cheaper half of each loop turn's
    write). Callers' drops and hand-offs land between two reads at worst: a lower bound still."""
    timings = {} if rt.timing is None else rt.timing.lanes
    lanes = []
    for lane in list(rt.lanes.values()):
        pending = lane.backlog()
        counts = (
            lane.taken + pending,
            lane.completed,
            lane.failed,
            lane.timed_out,
            lane.cancelled,
            pending,
            lane.running,
            lane.dropped_full,
            lane.dropped_closed,
            0,
            lane.retries,
        )
        lanes.append((lane.name, counts, timings.get(lane.name)))
    w = rt.watch
    return pub.write(
        lanes,
        stalls=0 if w is None else w.stalls,
        longest_stall=0.0 if w is None else w.longest_stall(),
    )


def draining(rt: Runtime) -> None:
    """Shutdown begins: publish the ``draining`` state."""
    pub = rt.publisher
    if pub is not None:
        pub.state = DRAINING
        write_runtime(rt, pub)


def drained(rt: Runtime, abandoned: int) -> None:
    """Shutdown ended with its report: publish the final figures as ``drained``, then stop."""
    pub = rt.publisher
    if pub is not None:
        pub.state = DRAINED
        pub.flags &= ~LOOP_ALIVE
        write_runtime(rt, pub, abandoned=abandoned, final=True)
        pub.close()


def loop_ended(rt: Runtime) -> None:
    """The loop thread ended outside shutdown: publish that, with the last figures."""
    pub = rt.publisher
    if pub is not None:
        pub.flags = (pub.flags & ~LOOP_ALIVE) | LOOP_DIED
        write_runtime(rt, pub, final=True)


def _adopt_quietly(directory: str) -> None:
    try:
        adopt_dead(directory)
    except Exception:
        logger.exception("asyncbridge: could not count the gone processes of %s", directory)


# -- reading ------------------------------------------------------------------------------------


def _parse(header: bytes, slot: bytes, hist: bytes, path: str = "") -> ProcessRecord | None:
    magic, version, pid, ppid, ticks, created, _, stalled, serial = _HEADER.unpack_from(header, 0)
    if magic != MAGIC or version != VERSION:
        return None
    updated, state, flags, stalls, longest, abandoned, nlanes = _SLOT.unpack_from(slot, 0)
    lanes: dict[str, LaneRecord] = {}
    for i in range(min(nlanes, MAX_LANES)):
        values = _LANE.unpack_from(slot, SLOT_HEADER_SIZE + i * LANE_SIZE)
        name = values[0].rstrip(b"\0").decode("utf-8", "replace")
        rec = LaneRecord()
        rec.counts = dict(zip(COUNTERS, values[1:], strict=True))
        h = _HIST.unpack_from(hist, i * HIST_SIZE)
        rec.wait_counts = list(h[:_NB])
        rec.wait_sum = h[_NB]
        rec.duration_counts = list(h[_NB + 1 : 2 * _NB + 1])
        rec.duration_sum = h[2 * _NB + 1]
        lanes[name] = rec
    return ProcessRecord(
        pid, ppid, ticks, serial, created, updated, state, flags, stalls, longest, stalled,
        abandoned, lanes, path,
    )  # fmt: skip


def read_file(path: str) -> ProcessRecord | None:
    """A consistent read of one status file; None if it is missing or not one of ours."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        if os.fstat(fd).st_size < FILE_SIZE:
            return None
        for attempt in range(200):
            header = os.pread(fd, HEADER_SIZE, 0)
            before = _SEQ.unpack_from(header, _SEQ_OFFSET)[0]
            slot = os.pread(fd, SLOT_SIZE, HEADER_SIZE + (before & 1) * SLOT_SIZE)
            after = _SEQ.unpack(os.pread(fd, _SEQ.size, _SEQ_OFFSET))[0]
            # The writer only ever fills the slot `seq` does not point at: one bump during the
            # read left ours alone; two may have overwritten it.
            if after - before <= 1:
                hist = os.pread(fd, MAX_LANES * HIST_SIZE, HIST_OFFSET)
                return _parse(header, slot, hist, path)
            if attempt >= 3:
                time.sleep(0.0005)  # a writer far faster than any loop: let it pause
        return None
    except (OSError, struct.error):
        return None
    finally:
        os.close(fd)


@dataclass
class Exited:
    """Sums over the processes that are gone and were counted (``exited.json``)."""

    processes: int = 0
    undrained: int = 0  # ended without their drain report: killed, or crashed
    stalls: int = 0
    longest_stall: float = 0.0
    lanes: dict[str, LaneRecord] = field(default_factory=dict)
    recent: list[str] = field(default_factory=list)  # identities folded in, newest last

    def lane(self, name: str) -> LaneRecord:
        rec = self.lanes.get(name)
        if rec is None:
            rec = self.lanes[name] = LaneRecord()
        return rec

    @property
    def lost(self) -> int:
        return sum(rec.lost for rec in self.lanes.values())

    def to_json(self) -> dict[str, Any]:
        return {
            "processes": self.processes,
            "undrained": self.undrained,
            "stalls": self.stalls,
            "longest_stall": self.longest_stall,
            "lanes": {name: rec.to_json() for name, rec in self.lanes.items()},
            "recent": self.recent[-64:],
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Exited:
        return cls(
            processes=int(data.get("processes", 0)),
            undrained=int(data.get("undrained", 0)),
            stalls=int(data.get("stalls", 0)),
            longest_stall=float(data.get("longest_stall", 0.0)),
            lanes={k: LaneRecord.from_json(v) for k, v in data.get("lanes", {}).items()},
            recent=[str(x) for x in data.get("recent", [])],
        )


@dataclass
class DirectoryView:
    """Everything in a status directory at one moment."""

    directory: str
    live: list[ProcessRecord]
    dead: list[ProcessRecord]  # gone, but nobody has counted them yet
    exited: Exited

    def lanes(self) -> dict[str, LaneRecord]:
        """Per-lane sums over live, dead and exited processes; ``lost`` counts the dead's
        unfinished work too."""
        out: dict[str, LaneRecord] = {}
        for name, rec in self.exited.lanes.items():
            out.setdefault(name, LaneRecord()).add(rec)
        for proc in self.live + self.dead:
            for name, rec in proc.lanes.items():
                out.setdefault(name, LaneRecord()).add(rec)
        for proc in self.dead:
            for name, rec in proc.lanes.items():
                out[name].lost += rec.unfinished
        return out


@contextlib.contextmanager
def _locked(directory: str, exclusive: bool) -> Iterator[None]:
    path = os.path.join(directory, LOCK)
    if exclusive:
        os.makedirs(directory, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    else:
        # A reader (`status`, a scraper) may be another user, with read access only.
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            yield  # no lock file yet: nothing has been counted, there is nothing to race
            return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        yield
    finally:
        os.close(fd)  # releases the lock


def _load_exited(directory: str) -> Exited:
    try:
        with open(os.path.join(directory, EXITED), encoding="utf-8") as f:
            return Exited.from_json(json.load(f))
    except FileNotFoundError:
        return Exited()
    except (OSError, ValueError) as exc:
        logger.warning(
            "asyncbridge: unreadable %s in %s (%s); starting over", EXITED, directory, exc
        )
        return Exited()


def _save_exited(directory: str, exited: Exited) -> None:
    tmp = os.path.join(directory, f".{EXITED}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(exited.to_json(), f)
    os.replace(tmp, os.path.join(directory, EXITED))


def _status_files(directory: str) -> list[str]:
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    return sorted(os.path.join(directory, n) for n in names if n.endswith(SUFFIX))


def read_directory(directory: str) -> DirectoryView:
    """Read every status file and the exited sums, consistently with concurrent claims."""
    live: list[ProcessRecord] = []
    dead: list[ProcessRecord] = []
    with _locked(directory, exclusive=False):
        exited = _load_exited(directory)
        for path in _status_files(directory):
            rec = read_file(path)
            if rec is None:
                continue
            (live if is_alive(rec.pid, rec.start_ticks) else dead).append(rec)
    return DirectoryView(directory, live, dead, exited)


# -- counting the processes that are gone -------------------------------------------------------


@dataclass(frozen=True)
class Claimed:
    """A process that is gone, as it was counted."""

    pid: int
    drained: bool
    lost: int  # its unfinished work (pending + running), counted as lost
    lost_by_lane: Mapping[str, int]
    record: ProcessRecord


def lost_message(pid: int, lost: int) -> str:
    """The WARNING line for a process that ended without draining."""
    return (
        f"asyncbridge: worker {pid} ended without draining: at least {lost} accepted jobs "
        "unfinished (lost)"
    )


def _identity(rec: ProcessRecord) -> str:
    return f"{rec.pid}-{rec.start_ticks}-{rec.serial}-{rec.created!r}"


def _fold(directory: str, path: str) -> Claimed | None:
    """Under the exclusive lock: count one gone process's file into ``exited.json``."""
    rec = read_file(path)
    if rec is None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        return None
    exited = _load_exited(directory)
    ident = _identity(rec)
    lost_by_lane = {name: lane.unfinished for name, lane in rec.lanes.items()}
    if ident not in exited.recent:  # not already counted by a claimer that died before unlink
        exited.processes += 1
        exited.undrained += not rec.drained
        exited.stalls += rec.stalls
        exited.longest_stall = max(exited.longest_stall, rec.longest_stall)
        for name, lane in rec.lanes.items():
            total = exited.lane(name)
            total.add(lane)
            total.lost += lane.unfinished
        exited.recent.append(ident)
        del exited.recent[:-64]
        _save_exited(directory, exited)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    return Claimed(rec.pid, rec.drained, sum(lost_by_lane.values()), lost_by_lane, rec)


def claim(directory: str, pid: int) -> list[Claimed]:
    """Count the files of process ``pid``, which is gone. Each file is counted exactly once,
    whoever else tries at the same time."""
    prefix = f"{pid}-"
    out: list[Claimed] = []
    with _locked(directory, exclusive=True):
        for path in _status_files(directory):
            if os.path.basename(path).startswith(prefix):
                claimed = _fold(directory, path)
                if claimed is not None:
                    out.append(claimed)
    return out


_GoneListener = Callable[[int, "Claimed | None"], object]
_gone_listeners: list[_GoneListener] = []


def on_worker_gone(listener: _GoneListener) -> None:
    """Call ``listener(pid, claimed)`` whenever a process is counted as gone (``claimed`` is
    None when it published nothing). Used by the Prometheus adapter."""
    if listener not in _gone_listeners:
        _gone_listeners.append(listener)


def _notify(pid: int, claimed: Claimed | None) -> None:
    for listener in _gone_listeners:
        try:
            listener(pid, claimed)
        except Exception:
            logger.exception("asyncbridge: a worker-gone listener failed for pid %d", pid)


_hinted: set[int] = set()


def worker_gone(
    pid: int, directory: str | None, warn: Callable[[str], object] | None = None
) -> list[Claimed]:
    """A worker process ended (gunicorn's ``child_exit``): count it, and log if it was lost.

    Args:
        pid: The process that ended.
        directory: The status directory, or None if nothing is published.
        warn: Where the WARNING line goes (default: the ``asyncbridge`` logger).

    Returns:
        What was counted for it (empty when it published nothing).
    """
    warn = warn or logger.warning
    if directory is None:
        if os.getpid() not in _hinted:
            _hinted.add(os.getpid())
            logger.info(
                "asyncbridge: worker %d exited; set ASYNCBRIDGE_STATUS_DIR (or "
                "PROMETHEUS_MULTIPROC_DIR) before the server starts to count what exited "
                "workers lost",
                pid,
            )
        _notify(pid, None)
        return []
    try:
        claimed = claim(directory, pid)
    except OSError as exc:
        logger.warning("asyncbridge: cannot count worker %d in %s: %s", pid, directory, exc)
        claimed = []
    for c in claimed:
        if not c.drained:
            warn(lost_message(c.pid, c.lost))
    if not claimed:
        _notify(pid, None)
    for c in claimed:
        _notify(pid, c)
    return claimed


def adopt_dead(directory: str, warn: Callable[[str], object] | None = None) -> list[Claimed]:
    """Count the files of every process in ``directory`` that is gone (a process starting its
    loop does this: under uWSGI, whose master runs no Python when a worker dies, the worker that
    replaces a killed one counts it)."""
    me = os.getpid()
    gone: set[int] = set()
    for path in _status_files(directory):
        rec = read_file(path)
        if rec is not None and rec.pid != me and not is_alive(rec.pid, rec.start_ticks):
            gone.add(rec.pid)
    out: list[Claimed] = []
    for pid in sorted(gone):
        out.extend(worker_gone(pid, directory, warn))
    return out
