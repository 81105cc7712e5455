"""gunicorn server hooks that give each worker its own loop and drain it when the worker exits.

In ``gunicorn.conf.py`` (gunicorn reads ``./gunicorn.conf.py`` without ``-c``), one line,
``from asyncbridge.gunicorn import *``, installs every hook of this module
(``docs/examples/gunicorn_conf.py`` is that file): ``post_fork``, ``post_worker_init``,
``worker_abort``, ``worker_exit`` and ``worker_int`` in each worker; in the master ``pre_fork``,
for an app that hands work off at import time with ``preload_app = True``, and ``child_exit``,
which counts what a killed worker lost when a status directory is set. Every public name that
gunicorn takes as a setting is one of these hooks.

Each hook has the exact arity gunicorn checks. To combine one with a hook of your own (gunicorn
has one slot per hook), use :func:`chain`. Nothing here installs a signal handler: gunicorn's
own handlers end the worker, and every exit path that runs Python at all reaches
:func:`worker_exit`. What the hooks do change is the disposition of exit signals once a worker is
on its way out (from :func:`worker_int`, :func:`worker_abort` and :func:`worker_exit` on): they
are ignored, because a second one (a terminal's Ctrl-C reaches every process of the group, then
the master sends its own) would run gunicorn's handler again inside the drain and cut it short.

The drain deadline at exit is ``min(drain_timeout, graceful_timeout - MARGIN,
timeout / 2 - MARGIN)``: once its request loop has ended a worker no longer heartbeats, and its
last heartbeat may already be ``timeout / 2`` old (the sync worker waits that long in ``select``
between heartbeats), so past that the master's ``timeout`` aborts and kills it.

gevent workers run the loop cooperatively in the hub: it starts in :func:`post_worker_init`,
after gunicorn has monkey-patched, and waits in gevent's selector. See the gunicorn guide for the
measurements behind that choice.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable
from typing import Any

from . import _publish
from ._api import default_bridge
from ._bridge import SHUTDOWN_MARGIN
from ._signals import ignore_exit_signals
from ._stats import ShutdownReport

__all__ = [
    "MARGIN",
    "QUICK_TIMEOUT",
    "chain",
    "child_exit",
    "drain_deadline",
    "post_fork",
    "post_worker_init",
    "pre_fork",
    "worker_abort",
    "worker_exit",
    "worker_int",
]

MARGIN = SHUTDOWN_MARGIN + 1.0
"""Seconds kept free below ``graceful_timeout`` and ``timeout / 2``: shutdown may run
``SHUTDOWN_MARGIN`` past its deadline, and the interpreter still has to exit."""

QUICK_TIMEOUT = 0.5
"""Drain deadline after SIGINT/SIGQUIT (``worker_int``). When the master escalates a graceful
stop to a quick one it waits only 2 s more, and the worker first sleeps 0.1 s."""

# Quick deadlines set by worker_int / worker_abort, keyed by PID so that a value inherited
# through fork never applies to a new worker.
_quick: dict[int, float] = {}

_GEVENT_WORKER_MODULE = "gunicorn.workers.ggevent"


def _deadline_for(worker: Any) -> float:
    """The drain deadline :func:`worker_exit` uses for ``worker`` in this process, in seconds.

    Args:
        worker: The gunicorn worker (its ``cfg`` gives ``graceful_timeout`` and ``timeout``).

    Returns:
        :func:`drain_deadline` of the bridge's ``drain_timeout`` and the worker's settings,
        shortened by a preceding ``worker_int`` or ``worker_abort`` in this process.
    """
    cfg = worker.cfg
    deadline = drain_deadline(
        default_bridge().options.drain_timeout,
        graceful_timeout=float(cfg.graceful_timeout),
        timeout=float(cfg.timeout),
    )
    quick = _quick.get(os.getpid())
    return deadline if quick is None else min(deadline, quick)


def drain_deadline(drain_timeout: float, *, graceful_timeout: float, timeout: float) -> float:
    """The exit drain deadline for the given settings: never long enough to be killed.

    Args:
        drain_timeout: The bridge's ``drain_timeout``.
        graceful_timeout: gunicorn's ``graceful_timeout``: SIGKILL follows SIGTERM after it.
        timeout: gunicorn's worker ``timeout``; 0 disables it.

    Returns:
        ``min(drain_timeout, graceful_timeout - MARGIN, timeout / 2 - MARGIN)``, at least 0.
    """
    bounds = [drain_timeout, graceful_timeout - MARGIN]
    if timeout > 0:
        bounds.append(timeout / 2 - MARGIN)
    return max(0.0, min(bounds))


def pre_fork(server: Any, worker: Any) -> None:
    """gunicorn ``pre_fork``: stop a loop the master owns before it forks a worker.

    With ``preload_app = True`` the app is imported in the master, and a ``run_soon`` at import
    time starts a loop thread there. Forking a process that runs threads can leave the child
    holding locks that no thread of the child will release (Python 3.12+ warns about it). The
    master drains that loop (with the bridge's ``drain_timeout``) and stops it before the first
    fork, and logs once why; each worker starts its own loop after fork, as always. Work handed
    off in the master after that is refused and counted (``dropped["closed"]``).

    Args:
        server: The gunicorn arbiter (its ``log`` is used).
        worker: The worker about to be forked.
    """
    bridge = default_bridge()
    if not bridge.owns_loop() or not bridge.stats().loop_running:
        return
    report = bridge.shutdown(log=False)
    server.log.warning(
        "asyncbridge: the master (pid %s) ran a bridge loop (work handed off at import with "
        "preload_app?); it was drained and stopped before forking workers, which start their "
        "own. Hand work off in request code, not at import. %s",
        os.getpid(),
        report,
    )


def post_fork(server: Any, worker: Any) -> None:
    """gunicorn ``post_fork``: discard the loop inherited from the master, start this worker's.

    Runs in the new worker before the app is loaded (when ``preload_app`` is off) and before
    ``init_process``. For gevent workers the loop is not started here but in
    :func:`post_worker_init`, after gunicorn's monkey-patching, so that it runs in the hub.

    Args:
        server: The gunicorn arbiter.
        worker: The new worker.
    """
    bridge = default_bridge()
    if _is_gevent_worker(worker):
        # Started now, the loop would get a real OS thread, which gevent's patching (done next)
        # leaves with greenlet-only executors and a changed thread identity; post_worker_init
        # starts it after the patch instead. The inherited loop was already discarded at fork.
        return
    bridge.start()
    worker.log.debug("asyncbridge: loop started in worker %s", os.getpid())


def post_worker_init(worker: Any) -> None:
    """gunicorn ``post_worker_init``: make sure this worker's loop runs (gevent: start it).

    Runs in the worker after the app is loaded and, for gevent workers, after monkey-patching.

    Args:
        worker: The worker.
    """
    default_bridge().start()
    where = "in the gevent hub" if _is_gevent_worker(worker) else "in a thread"
    worker.log.debug("asyncbridge: loop running %s of worker %s", where, os.getpid())


def worker_int(worker: Any) -> None:
    """gunicorn ``worker_int`` (SIGINT/SIGQUIT): the quick exit path; shorten the drain.

    gunicorn calls it from the worker's signal handler, then exits, which reaches
    :func:`worker_exit`; the drain there gets at most :data:`QUICK_TIMEOUT` seconds.

    Args:
        worker: The worker.
    """
    _shorten(worker, QUICK_TIMEOUT, "SIGINT/SIGQUIT")


def worker_abort(worker: Any) -> None:
    """gunicorn ``worker_abort`` (SIGABRT, sent when the worker passed ``timeout``).

    SIGKILL follows about a second later, so :func:`worker_exit` cancels everything at once
    (deadline 0) and only spends the cancellation margin.

    Args:
        worker: The worker.
    """
    _shorten(worker, 0.0, "SIGABRT (worker timeout)")


def worker_exit(server: Any, worker: Any) -> None:
    """gunicorn ``worker_exit``: drain this worker's loop and log the shutdown report.

    Does nothing unless this process is the worker and owns the loop: gunicorn also calls
    ``worker_exit`` in the master, for a worker that is already gone. The report goes to
    gunicorn's error log, at INFO when everything finished and at WARNING when something was
    cancelled or abandoned.

    Args:
        server: The gunicorn arbiter.
        worker: The exiting worker.
    """
    bridge = default_bridge()
    if worker.pid != os.getpid() or not bridge.owns_loop():
        return
    # A second signal (Ctrl-C to the process group, then the master's own) would raise
    # SystemExit inside the drain through gunicorn's handlers and cut it short.
    ignore_exit_signals()
    report = bridge.shutdown(_deadline_for(worker), log=False)
    _log_report(worker.log, report)


def _log_report(log: Any, report: ShutdownReport) -> None:
    """Log ``report`` on a gunicorn logger: INFO when clean, WARNING otherwise.

    Args:
        log: gunicorn's logger (``worker.log`` or ``server.log``).
        report: What :func:`asyncbridge.shutdown` returned.
    """
    (log.info if report.clean else log.warning)("%s", report)


def chain(*hooks: Callable[..., object]) -> Callable[..., None]:
    """Combine hooks of one gunicorn slot into one callable with the arity gunicorn expects.

    ``worker_exit = chain(asyncbridge.gunicorn.worker_exit, my_worker_exit)`` runs both, in
    order. Every hook runs even when an earlier one raises; the first exception is re-raised
    after the last hook.

    Args:
        *hooks: Callables taking the same number of positional parameters.

    Returns:
        A function taking that many positional parameters.

    Raises:
        TypeError: No hooks, a hook that is not callable, or hooks of different arities.
    """
    if not hooks:
        raise TypeError("chain() needs at least one hook")
    for hook in hooks:
        if not callable(hook):
            raise TypeError(f"chain() takes callables, got {type(hook).__name__} {hook!r}")
    arities = {_arity(hook) for hook in hooks}
    if len(arities) != 1:
        detail = ", ".join(f"{_name(h)} takes {_arity(h)}" for h in hooks)
        raise TypeError(f"chain() hooks must take the same number of arguments: {detail}")
    (arity,) = arities

    def chained(*args: object) -> None:
        error: BaseException | None = None
        for hook in hooks:
            try:
                hook(*args)
            except BaseException as exc:  # SystemExit too: the next hook may be the drain
                if error is None:
                    error = exc
        if error is not None:
            raise error

    # gunicorn counts positional parameters with inspect.signature, which honours this.
    chained.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [inspect.Parameter(f"arg{i}", inspect.Parameter.POSITIONAL_ONLY) for i in range(arity)]
    )
    chained.__name__ = chained.__qualname__ = "chain(" + ", ".join(map(_name, hooks)) + ")"
    chained.__doc__ = f"Calls {', '.join(map(_name, hooks))} in order."
    return chained


def _arity(hook: Callable[..., object]) -> int:
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return sum(p.kind in positional for p in inspect.signature(hook).parameters.values())


def _name(hook: Callable[..., object]) -> str:
    return getattr(hook, "__qualname__", None) or repr(hook)


def _shorten(worker: Any, seconds: float, why: str) -> None:
    # From here on the worker is on its way out: gunicorn exits right after this hook returns
    # and reaches worker_exit. A second exit signal (a terminal's Ctrl-C reaches every process
    # of the group, then the master sends its own SIGQUIT) would run gunicorn's handler again
    # inside that exit, cutting the drain short before its report is logged.
    ignore_exit_signals()
    # Recorded even before the loop runs: the signal may arrive while the worker still boots.
    _quick[os.getpid()] = seconds
    stats = default_bridge().stats()
    worker.log.info(
        "asyncbridge: %s in worker %s: %d pending and %d running; draining for at most %gs",
        why,
        os.getpid(),
        stats.pending,
        stats.running,
        _deadline_for(worker),
    )


def _is_gevent_worker(worker: Any) -> bool:
    return any(cls.__module__ == _GEVENT_WORKER_MODULE for cls in type(worker).__mro__)


def child_exit(server: Any, worker: Any) -> None:
    """gunicorn ``child_exit``: in the master, count a worker that has exited, however it ended.

    gunicorn calls it after reaping the worker, whatever killed it: SIGKILL after
    ``graceful_timeout`` or ``timeout``, the OOM killer, ``kill -9``. The worker's last published
    figures (see the ``status_dir`` option) go into the directory's totals, and a worker that
    ended without its drain report is logged on gunicorn's error log at WARNING: "asyncbridge:
    worker <pid> ended without draining: at least N accepted jobs unfinished (lost)", N being
    its pending and running jobs as published at most one loop turn before it died. N is added to
    ``asyncbridge_jobs_lost_total`` (``asyncbridge.prometheus``), which also passes the pid to
    prometheus_client's ``mark_process_dead`` in multiprocess mode.

    Needs the status directory (``ASYNCBRIDGE_STATUS_DIR`` or ``PROMETHEUS_MULTIPROC_DIR``) set
    in the master's environment before the workers start; without it, it says so once at INFO.

    Args:
        server: The gunicorn arbiter.
        worker: The worker that exited (only its ``pid`` is read).
    """
    directory = _publish.resolve_directory(default_bridge().options.status_dir)
    _publish.worker_gone(int(worker.pid), directory, warn=server.log.warning)
