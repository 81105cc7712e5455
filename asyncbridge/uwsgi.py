"""Run asyncbridge inside uWSGI workers: start the loop after fork, drain it in ``uwsgi.atexit``.

Call :func:`install` once, from the module that defines the WSGI application::

    import asyncbridge.uwsgi

    asyncbridge.uwsgi.install()

It works whether uWSGI imports that module in the master before forking (the default), in each
worker (``lazy-apps``), or in a worker without a master. It installs no signal handlers: uWSGI's
own exit paths reach ``uwsgi.atexit``, where the worker drains (ignoring further exit signals
meanwhile, so that a second Ctrl-C does not cut the drain short). See the uWSGI guide for which exit
paths run it (a busy worker killed by INT or TERM, ``skip-atexit`` and SIGKILL run nothing).
"""

from __future__ import annotations

import importlib
import logging
import math
import weakref
from collections.abc import Callable, Mapping
from typing import Any

from ._api import default_bridge
from ._bridge import SHUTDOWN_MARGIN, Bridge
from ._errors import AsyncBridgeError
from ._inputs import shown
from ._signals import ignore_exit_signals

__all__ = [
    "DEFAULT_WORKER_RELOAD_MERCY",
    "EXIT_MARGIN",
    "exit_deadline",
    "install",
    "worker_reload_mercy",
]

_logger = logging.getLogger("asyncbridge")

DEFAULT_WORKER_RELOAD_MERCY = 60.0
"""uWSGI's ``worker-reload-mercy`` when the config does not set it, in seconds."""

EXIT_MARGIN = SHUTDOWN_MARGIN + 1.0
"""Seconds kept free inside ``worker-reload-mercy`` after the drain deadline: shutdown may run
``SHUTDOWN_MARGIN`` past its deadline, and interpreter finalization and other exit hooks follow."""

_Hook = Callable[[], object]
_installed: weakref.WeakSet[Bridge] = weakref.WeakSet()


def install(bridge: Bridge | None = None) -> bool:
    """Hook ``bridge`` (the default bridge if None) into this uWSGI process's lifecycle.

    In a worker (``lazy-apps``) the loop starts now. In the master, the loop starts right after
    each fork through ``uwsgi.post_fork_hook``; the hook already there (such as
    ``uwsgidecorators``' postfork chain) runs after it. Either way ``uwsgi.atexit`` is chained
    to a shutdown of the worker's own loop, with a deadline of ``min(drain_timeout,
    worker-reload-mercy - EXIT_MARGIN)`` so that uWSGI does not SIGKILL the worker mid-drain.
    Calling it again is a no-op. Hooks set by your code before ``install()`` keep running.

    Outside uWSGI (tests, ``python -m``, another server) it does nothing and returns False: the
    bridge then starts on first use and drains at interpreter exit, as in any plain process.

    Args:
        bridge: The bridge to manage; defaults to :func:`asyncbridge.default_bridge`.

    Returns:
        True under uWSGI, False when not running inside uWSGI.

    Raises:
        AsyncBridgeError: uWSGI runs without Python threads (``uwsgi.has_threads`` is false), so
            the loop thread would barely run. Set ``enable-threads = true``.
    """
    uwsgi = _uwsgi_module()
    if uwsgi is None:
        _logger.debug("asyncbridge.uwsgi.install(): not running under uWSGI; nothing to do")
        return False
    if bridge is None:
        bridge = default_bridge()
    if not getattr(uwsgi, "has_threads", True):
        raise AsyncBridgeError(
            "uWSGI is running without Python threads (uwsgi.has_threads is false), so the "
            "asyncbridge loop thread would barely run and work would be sent late or never. "
            "Set `enable-threads = true` in the [uwsgi] section of your config (or pass "
            "--enable-threads, or use threads > 1)."
        )
    if bridge in _installed:
        return True
    _installed.add(bridge)
    _chain_atexit(uwsgi, bridge)
    deadline = exit_deadline(bridge.options.drain_timeout, uwsgi.opt)
    if deadline < bridge.options.drain_timeout:
        _logger.warning(
            "asyncbridge: drain_timeout=%gs does not fit in uWSGI's worker-reload-mercy=%gs; "
            "workers will drain for at most %gs at exit (raise worker-reload-mercy to at least "
            "%gs to use the whole drain_timeout)",
            bridge.options.drain_timeout,
            worker_reload_mercy(uwsgi.opt),
            deadline,
            bridge.options.drain_timeout + EXIT_MARGIN,
        )
    if uwsgi.worker_id() > 0:
        # Imported in the worker (lazy-apps, or a later import): no fork is coming.
        bridge.start()
    else:
        # Imported before the fork: in the master, or in a master-less process that becomes
        # worker 1 (uWSGI calls post_fork_hook there too). os.register_at_fork callbacks do not
        # run in uWSGI workers, hence the hook.
        uwsgi.post_fork_hook = _PostFork(uwsgi, bridge, getattr(uwsgi, "post_fork_hook", None))
    return True


def worker_reload_mercy(opt: Mapping[str, Any]) -> float:
    """The effective ``worker-reload-mercy`` in seconds, read from ``uwsgi.opt``.

    Args:
        opt: ``uwsgi.opt``: raw option values (bytes, True, or a list when repeated).

    Returns:
        The last value given, or :data:`DEFAULT_WORKER_RELOAD_MERCY` when unset or unreadable.
    """
    raw = opt.get("worker-reload-mercy")
    if isinstance(raw, list):
        raw = raw[-1] if raw else None
    if isinstance(raw, bytes):
        raw = raw.decode(errors="replace")
    if isinstance(raw, str):
        try:
            seconds = float(int(raw.strip()))
        except OverflowError:  # more seconds than a float holds: no mercy limit to speak of
            return math.inf
        except ValueError:
            _logger.warning(
                "asyncbridge: cannot read worker-reload-mercy=%s; assuming uWSGI's default %gs",
                shown(raw),
                DEFAULT_WORKER_RELOAD_MERCY,
            )
            return DEFAULT_WORKER_RELOAD_MERCY
        return max(0.0, seconds)  # 0 is no mercy at all: SIGKILL at once
    return DEFAULT_WORKER_RELOAD_MERCY


def exit_deadline(drain_timeout: float, opt: Mapping[str, Any]) -> float:
    """The drain deadline a worker uses at exit: it must end before uWSGI's SIGKILL.

    Args:
        drain_timeout: The bridge's ``drain_timeout``.
        opt: ``uwsgi.opt``.

    Returns:
        ``min(drain_timeout, worker-reload-mercy - EXIT_MARGIN)``, and never below 0.
    """
    return max(0.0, min(drain_timeout, worker_reload_mercy(opt) - EXIT_MARGIN))


def _uwsgi_module() -> Any:
    # The `uwsgi` module exists only inside a uWSGI process (it is built into the server).
    try:
        return importlib.import_module("uwsgi")
    except ImportError:
        return None


def _chain_atexit(uwsgi: Any, bridge: Bridge) -> None:
    current = getattr(uwsgi, "atexit", None)
    if isinstance(current, _AtExit) and current.bridge is bridge:
        return
    uwsgi.atexit = _AtExit(uwsgi, bridge, current)


class _Chained:
    """A uWSGI hook slot's new occupant, which keeps the hook it replaced."""

    def __init__(self, uwsgi: Any, bridge: Bridge, previous: _Hook | None) -> None:
        self.uwsgi = uwsgi
        self.bridge = bridge
        self.previous = previous


class _PostFork(_Chained):
    """``uwsgi.post_fork_hook``: start this worker's loop, then run the hook it replaced."""

    def __call__(self) -> None:
        try:
            self.bridge.start()
            # App code may have replaced uwsgi.atexit after install(); chain it again.
            _chain_atexit(self.uwsgi, self.bridge)
        except Exception:
            _logger.exception("asyncbridge could not start after fork; it will start on first use")
        if self.previous is not None:
            self.previous()


class _AtExit(_Chained):
    """``uwsgi.atexit``: run the hook it replaced, then drain this worker's own loop."""

    def __call__(self) -> None:
        # Only the process that started the loop may shut it down; a copy inherited through
        # fork belongs to the parent.
        owner = self.bridge.owns_loop()
        if owner:
            ignore_exit_signals()
        try:
            # The user's hook first: work it hands to the bridge is drained too.
            if self.previous is not None:
                self.previous()
        finally:
            if self.bridge.owns_loop():  # the user's hook may have started it
                deadline = exit_deadline(self.bridge.options.drain_timeout, self.uwsgi.opt)
                self.bridge.shutdown(deadline)
