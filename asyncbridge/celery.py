"""Run asyncbridge inside Celery workers: a loop per pool process, drained before it exits.

Call :func:`install` once, in the module that creates your Celery app (the worker imports it
before it forks its pool)::

    app = Celery("proj", broker=BROKER_URL)
    asyncbridge.celery.install()

What it connects, per pool:

- **prefork** (the default): ``worker_process_init`` starts the loop in each pool child, right
  after the fork (Celery kills a child that takes more than 4 s there; starting the loop takes
  about a millisecond). ``worker_process_shutdown`` drains it: Celery sends it in the child when
  ``max-tasks-per-child`` (or ``max-memory-per-child``) recycles it, at warm shutdown and when a
  cold shutdown terminates it, and the child then leaves with ``os._exit``, so ``atexit`` never
  runs there.
- **solo**: Celery sends ``worker_process_init`` in the main process, which runs the tasks; the
  loop starts there.
- **threads** (and anything else running tasks in the main process): the loop starts on first
  use.

In every case ``worker_shutdown`` drains the main process's own loop, after the pool has
stopped. Every drain acts only in the process that started the loop (a bridge inherited through
fork belongs to the parent), ignores further exit signals while it runs (a second SIGTERM from a
process manager would otherwise end it half-way), and logs its report on the ``asyncbridge``
logger.

Celery itself puts no deadline on these hooks; the deadline is the one your process manager
gives the whole worker (systemd's ``TimeoutStopSec``, Kubernetes' grace period, Docker's 10 s),
which must cover the longest task, this drain, and about a second per child that Celery sleeps
after it. Pass ``timeout=`` to keep the drain inside it.
"""

from __future__ import annotations

import logging
from typing import Any

from ._api import default_bridge
from ._bridge import Bridge
from ._signals import ignore_exit_signals
from ._stats import ShutdownReport

__all__ = ["install"]

_logger = logging.getLogger("asyncbridge")

# What install() chose, read by the receivers. None: the default bridge at the time of the
# signal (a test may have swapped it), and its drain_timeout.
_config: dict[str, Any] = {"bridge": None, "timeout": None}
_UID = "asyncbridge.celery."


def install(bridge: Bridge | None = None, *, timeout: float | None = None) -> None:
    """Connect the bridge to Celery's worker signals. Calling it again replaces the settings.

    Importing this module does not import Celery; this function does.

    Args:
        bridge: The bridge to run; defaults to :func:`asyncbridge.default_bridge` (looked up
            when each signal arrives).
        timeout: The drain deadline in seconds, per process; defaults to the bridge's
            ``drain_timeout``.

    Raises:
        ValueError: A negative ``timeout``.
    """
    from celery import signals  # type: ignore[import-untyped]

    if timeout is not None and timeout < 0:
        raise ValueError(f"timeout must be 0 or more seconds, got {timeout!r}")
    _config.update(bridge=bridge, timeout=timeout)
    # Strong references and fixed uids: connecting twice keeps one receiver of each.
    signals.worker_process_init.connect(_on_process_init, weak=False, dispatch_uid=_UID + "init")
    signals.worker_process_shutdown.connect(
        _on_process_shutdown, weak=False, dispatch_uid=_UID + "process_shutdown"
    )
    signals.worker_shutdown.connect(
        _on_worker_shutdown, weak=False, dispatch_uid=_UID + "worker_shutdown"
    )


def _bridge() -> Bridge:
    bridge: Bridge | None = _config["bridge"]
    return default_bridge() if bridge is None else bridge


def _deadline(bridge: Bridge) -> float:
    timeout: float | None = _config["timeout"]
    return bridge.options.drain_timeout if timeout is None else timeout


def _on_process_init(**_: Any) -> None:
    # A prefork child just forked (or the solo pool's main process): the inherited bridge was
    # discarded at fork, so this starts the child's own loop. Must stay far below 4 s.
    try:
        _bridge().start()
    except Exception:
        # Never fail the child's start: the loop then starts on first use.
        _logger.exception("asyncbridge could not start in the Celery pool process")


def _on_process_shutdown(**_: Any) -> None:
    _drain("pool process")


def _on_worker_shutdown(**_: Any) -> None:
    _drain("main process")


def _drain(where: str) -> ShutdownReport | None:
    bridge = _bridge()
    if not bridge.owns_loop():  # never started here, or inherited: the parent's to drain
        return None
    ignore_exit_signals()
    report = bridge.shutdown(_deadline(bridge), log=False)
    (_logger.info if report.clean else _logger.warning)("Celery %s: %s", where, report)
    return report
