"""Dramatiq middleware: each worker process runs a bridge loop and drains it before it exits.

Add it to the broker, in the module that the ``dramatiq`` command imports::

    broker = RedisBroker(url=REDIS_URL)
    broker.add_middleware(asyncbridge.dramatiq.AsyncBridge())
    dramatiq.set_broker(broker)

Dramatiq forks (spawns, from Python 3.14) its worker processes before importing that module,
and each runs several worker threads; the bridge is per process, shared by the threads.
``after_process_boot`` starts the loop once the process has imported the broker.
``after_worker_shutdown`` drains it: Dramatiq emits it after the worker threads have finished
their messages (within ``--worker-shutdown-timeout``), and the process then leaves through
``multiprocessing``'s ``os._exit``, where ``atexit`` never runs. (The core's fallback, a
``multiprocessing`` finalizer, would drain there too, later and with the bridge's
``drain_timeout``; a second SIGTERM cuts that one short, since Dramatiq's handler then raises
``SystemExit``.) While the middleware's drain runs, further exit signals are ignored.

A Worker that your own code starts (a test with a ``StubBroker``, an embedded worker) gets no
``after_process_boot``: there, stopping it waits for the bridge to go idle without shutting it
down, since the process goes on.
"""

from __future__ import annotations

import logging
import os

import dramatiq

from ._api import default_bridge
from ._bridge import Bridge
from ._signals import ignore_exit_signals

__all__ = ["AsyncBridge"]

_logger = logging.getLogger("asyncbridge")


class AsyncBridge(dramatiq.Middleware):
    """Starts the bridge loop in each Dramatiq worker process and drains it at shutdown.

    Args:
        bridge: The bridge to run; defaults to :func:`asyncbridge.default_bridge` (looked up
            when each hook runs).
        timeout: The drain deadline in seconds; defaults to the bridge's ``drain_timeout``.

    Raises:
        ValueError: A negative ``timeout``.
    """

    def __init__(self, bridge: Bridge | None = None, *, timeout: float | None = None) -> None:
        if timeout is not None and timeout < 0:
            raise ValueError(f"timeout must be 0 or more seconds, got {timeout!r}")
        self.bridge = bridge
        self.timeout = timeout
        # PIDs of the processes that Dramatiq's command booted (after_process_boot ran there).
        self._booted: set[int] = set()

    def _bridge(self) -> Bridge:
        return default_bridge() if self.bridge is None else self.bridge

    def _deadline(self, bridge: Bridge) -> float:
        return bridge.options.drain_timeout if self.timeout is None else self.timeout

    def after_process_boot(self, broker: dramatiq.Broker) -> None:
        """Start this worker process's loop (the inherited one, if any, stays the parent's)."""
        self._booted.add(os.getpid())
        self._bridge().start()

    def before_worker_shutdown(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        """Log what the loop holds as the worker begins to stop (the threads may add more)."""
        bridge = self._bridge()
        if bridge.owns_loop():
            s = bridge.stats()
            _logger.info(
                "asyncbridge: Dramatiq worker %d stopping with %d pending and %d running; "
                "draining after its threads finish",
                os.getpid(),
                s.pending,
                s.running,
            )

    def after_worker_shutdown(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        """Drain the loop now that the worker threads are done, and log the report."""
        bridge = self._bridge()
        if not bridge.owns_loop():
            return
        deadline = self._deadline(bridge)
        if os.getpid() not in self._booted:
            # An embedded worker: the process lives on, and so does its bridge.
            if not bridge.drain(deadline):
                _logger.warning(
                    "asyncbridge: the bridge was still busy %gs after the Dramatiq worker stopped",
                    deadline,
                )
            return
        ignore_exit_signals()
        _logger.info(
            "asyncbridge: Dramatiq worker %d draining for at most %gs", os.getpid(), deadline
        )
        report = bridge.shutdown(deadline, log=False)
        (_logger.info if report.clean else _logger.warning)("Dramatiq worker: %s", report)
