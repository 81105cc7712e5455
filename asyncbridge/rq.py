"""RQ worker classes whose work horses drain the bridge before they exit.

Start the worker with one of them::

    rq worker --worker-class asyncbridge.rq.Worker            # fork a work horse per job
    rq worker --worker-class asyncbridge.rq.SimpleWorker      # run jobs in the worker itself

RQ's ``rq.Worker`` forks a work horse for every job, and the horse leaves with
``os._exit()`` right after the job: ``atexit`` never runs, and whatever the job handed to the
bridge dies with the horse. :class:`Worker` drains the horse's bridge between the end of the job
and that exit, within :func:`horse_deadline`: RQ's worker kills a horse that is still alive 60 s
after its job's timeout. The job's own timeout (RQ's death penalty) covers the job function only;
the drain comes after it.

:class:`SimpleWorker` runs every job in the worker process, so the loop lives across jobs. It
drains when the worker stops (a warm shutdown, ``--burst``, ``--max-jobs``), before the worker
unregisters. :class:`SpawnWorker` is :class:`Worker` for RQ's spawned (not forked) horses.

While a drain runs, further exit signals are ignored, so that the second SIGTERM or Ctrl-C of a
cold shutdown cannot cut it short in a SimpleWorker; a forked horse gets SIGKILL on a cold
shutdown, which nothing survives.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import rq
from rq.utils import now

from ._api import default_bridge
from ._bridge import SHUTDOWN_MARGIN, Bridge
from ._signals import ignore_exit_signals
from ._stats import ShutdownReport

if TYPE_CHECKING:
    from rq.executions import Execution
    from rq.job import Job
    from rq.queue import Queue

__all__ = ["HORSE_KILL_GRACE", "MARGIN", "SimpleWorker", "SpawnWorker", "Worker", "horse_deadline"]

HORSE_KILL_GRACE = 60.0
"""Seconds past a job's timeout after which RQ's worker kills its horse (``monitor_work_horse``)."""

MARGIN = SHUTDOWN_MARGIN + 1.0
"""Seconds kept free below that kill. Shutdown may run ``SHUTDOWN_MARGIN`` past its deadline,
and the horse must still exit."""


def horse_deadline(drain_timeout: float, *, job_timeout: float | None, elapsed: float) -> float:
    """The drain deadline of a work horse whose job has just ended.

    Args:
        drain_timeout: The bridge's ``drain_timeout`` (or the worker's ``drain_timeout``).
        job_timeout: The job's timeout in seconds; ``-1`` is RQ's "no limit", ``None`` its
            queue default of 180 s.
        elapsed: Seconds since the job started.

    Returns:
        ``min(drain_timeout, job_timeout + HORSE_KILL_GRACE - elapsed - MARGIN)``, at least 0;
        ``drain_timeout`` when the job has no timeout.
    """
    if job_timeout is None:
        job_timeout = float(rq.Queue.DEFAULT_TIMEOUT)
    if job_timeout == -1:
        return max(0.0, drain_timeout)
    return max(0.0, min(drain_timeout, job_timeout + HORSE_KILL_GRACE - elapsed - MARGIN))


def _bridge(worker: Any) -> Bridge:
    bridge: Bridge | None = worker.bridge
    return default_bridge() if bridge is None else bridge


def _timeout(worker: Any) -> float:
    timeout: float | None = worker.drain_timeout
    return _bridge(worker).options.drain_timeout if timeout is None else timeout


def _drain(worker: Any, deadline: float, where: str) -> ShutdownReport | None:
    """Drain ``worker``'s bridge in this process, if it started a loop here; log the report."""
    bridge = _bridge(worker)
    if not bridge.owns_loop():  # nothing started here (an inherited loop is the parent's)
        return None
    ignore_exit_signals()
    report = bridge.shutdown(deadline, log=False)
    (worker.log.info if report.clean else worker.log.warning)("%s: %s", where, report)
    return report


def _drain_horse(worker: Any, job: Job) -> None:
    """In a work horse, after its job: drain within :func:`horse_deadline`."""
    if not worker.is_horse:
        return
    started = job.started_at
    elapsed = 0.0 if started is None else (now() - started).total_seconds()
    deadline = horse_deadline(_timeout(worker), job_timeout=job.timeout, elapsed=elapsed)
    _drain(worker, deadline, f"asyncbridge drain of work horse for job {job.id}")


def _drain_worker(worker: Any) -> None:
    """In the worker process (not a horse), when it stops: drain a loop it started itself."""
    if not worker.is_horse:
        _drain(worker, _timeout(worker), "asyncbridge drain of worker")


class _DrainsItsHorses(rq.Worker):
    """What :class:`Worker` and :class:`SpawnWorker` share: a work horse drains before it exits."""

    bridge: ClassVar[Bridge | None] = None
    """The bridge to drain, or None for :func:`asyncbridge.default_bridge` at drain time."""

    drain_timeout: ClassVar[float | None] = None
    """The drain deadline in seconds, or None for the bridge's ``drain_timeout``."""

    def perform_job(self, job: Job, queue: Queue, execution: Execution) -> bool:
        """Run the job, then, in a work horse, drain what it handed off (before ``os._exit``).

        Returns:
            What RQ's ``perform_job`` returned: True when the job succeeded.
        """
        try:
            return super().perform_job(job, queue, execution)
        finally:
            _drain_horse(self, job)

    def teardown(self) -> None:
        """Drain the worker process's own loop, if it started one, then unregister."""
        try:
            _drain_worker(self)
        finally:
            super().teardown()  # type: ignore[no-untyped-call]


class Worker(_DrainsItsHorses):
    """``rq.Worker`` whose work horse drains the bridge before its ``os._exit()``.

    Each job runs in a new horse, which starts its own loop on first use and drains it after
    the job, within :func:`horse_deadline`; the worker takes its next job once the horse has
    exited. Set the class attributes ``drain_timeout`` (seconds) or ``bridge`` in a subclass to
    change them. The report goes to RQ's worker log. A loop that the worker process itself
    started (outside any job) is drained when the worker stops.
    """


class SpawnWorker(_DrainsItsHorses, rq.SpawnWorker):
    """``rq.SpawnWorker`` (horses started by ``posix_spawn``) with :class:`Worker`'s drain."""


class SimpleWorker(rq.SimpleWorker):
    """``rq.SimpleWorker`` (jobs in the worker process) that drains when the worker stops.

    The loop starts on the first hand-off and serves every later job; the drain runs when the
    work loop ends (warm shutdown, ``--burst`` with an empty queue, ``--max-jobs``), before the
    worker unregisters, with the bridge's ``drain_timeout`` (or the class attribute
    ``drain_timeout``).
    """

    bridge: ClassVar[Bridge | None] = None
    """The bridge to drain, or None for :func:`asyncbridge.default_bridge` at drain time."""

    drain_timeout: ClassVar[float | None] = None
    """The drain deadline in seconds, or None for the bridge's ``drain_timeout``."""

    def teardown(self) -> None:
        """Drain the worker process's own loop, if it started one, then unregister."""
        try:
            _drain_worker(self)
        finally:
            super().teardown()  # type: ignore[no-untyped-call]
