"""Run asyncbridge inside Apache mod_wsgi: drain each process's loop when mod_wsgi stops it.

Call :func:`install` once, in the WSGI script, with the ``shutdown-timeout`` of your
``WSGIDaemonProcess`` (mod_wsgi does not expose it to Python)::

    import asyncbridge.mod_wsgi

    asyncbridge.mod_wsgi.install(shutdown_timeout=15)

mod_wsgi starts Python in each process after Apache has forked it, so the loop starts on first
use as in any plain process. What needs a hook is the exit: mod_wsgi calls the
``mod_wsgi.subscribe_shutdown`` callbacks when a process is told to stop, then waits for its
request threads, then destroys the interpreter (Python ``atexit``). A reaper thread aborts the
process ``shutdown-timeout`` seconds after the stop began, and Apache itself SIGKILLs its
daemons 3 seconds after it asked them to stop (``apachectl stop``, ``graceful``, ``restart``).
The drain runs in the shutdown callback, sized to end before whichever comes first.
``signal.signal`` is ignored inside mod_wsgi, so no signal handler is installed.
"""

from __future__ import annotations

import importlib
import logging
import math
import threading
import time
import weakref
from typing import Any

from ._api import default_bridge
from ._bridge import SHUTDOWN_MARGIN, Bridge
from ._errors import AsyncBridgeError
from ._inputs import as_float, shown

__all__ = [
    "APACHE_KILL_AFTER",
    "DEFAULT_SHUTDOWN_TIMEOUT",
    "EXIT_MARGIN",
    "exit_deadline",
    "install",
]

_logger = logging.getLogger("asyncbridge")

DEFAULT_SHUTDOWN_TIMEOUT = 5.0
"""mod_wsgi's ``shutdown-timeout`` when the ``WSGIDaemonProcess`` does not set it, in seconds
(also the default of ``mod_wsgi-express``)."""

APACHE_KILL_AFTER = 3.0
"""Seconds Apache grants its mod_wsgi daemons when it stops or restarts (``apachectl stop``,
``graceful``, ``restart``, SIGTERM to the parent): SIGTERM, then SIGKILL 3 s later, whatever
``shutdown-timeout`` says. mod_wsgi reports that stop as ``shutdown_reason="shutdown_signal"``."""

EXIT_MARGIN = SHUTDOWN_MARGIN + 0.5
"""How many seconds are kept free after the drain deadline, because shutdown may run
``SHUTDOWN_MARGIN`` past its deadline and mod_wsgi then joins its request threads and destroys
the interpreter."""

_REQUESTS_SHARE = 0.5
# The share of the deadline spent waiting for requests still running when the stop began:
# mod_wsgi calls the shutdown callbacks before it waits for them, and work they hand over after
# the drain closed admission would be refused ("closed").

_QUIET = 0.1
# How long no request must have been running before the drain closes admission. mod_wsgi lists a
# request in ``active_requests`` only once Python runs it, and a request thread that checked the
# stop flag just before the stop accepts its connection all the same: its request shows up a
# moment after the callback began, and would hand its work over to a closed bridge.

_lock = threading.Lock()
_installed: weakref.WeakKeyDictionary[Bridge, _OnShutdown] = weakref.WeakKeyDictionary()


def install(bridge: Bridge | None = None, *, shutdown_timeout: float | None = None) -> None:
    """Drain ``bridge`` (the default bridge if None) when mod_wsgi stops this process.

    Registers a ``mod_wsgi.subscribe_shutdown`` callback. When mod_wsgi stops the process
    (``maximum-requests``, ``restart-interval``, ``inactivity-timeout``, a reload, Apache stopping
    or restarting), the callback waits for requests still running, until none has run for 0.1 s
    (at most half the deadline), then shuts the bridge down with the deadline of
    :func:`exit_deadline`, less that wait. Only the process that started the loop
    drains it, once; the interpreter's ``atexit`` fallback then finds it done. Works from any
    thread (mod_wsgi may load the WSGI script in a request thread). Calling it again for the same
    bridge changes nothing.

    Args:
        bridge: The bridge to manage; defaults to :func:`asyncbridge.default_bridge`.
        shutdown_timeout: The ``shutdown-timeout`` of the ``WSGIDaemonProcess`` (or of
            ``mod_wsgi-express --shutdown-timeout``), in seconds; 0 means mod_wsgi's reaper is
            off. mod_wsgi does not expose it to Python, so pass the value your config uses.
            Defaults to :data:`DEFAULT_SHUTDOWN_TIMEOUT`.

    Raises:
        AsyncBridgeError: Not running inside mod_wsgi (no embedded ``mod_wsgi`` module with
            ``subscribe_shutdown``).
        TypeError: ``shutdown_timeout`` is not a number.
        ValueError: ``shutdown_timeout`` is negative or not finite.
    """
    timeout = _check_timeout(shutdown_timeout)
    mod_wsgi = _mod_wsgi_module()
    if bridge is None:
        bridge = default_bridge()
    with _lock:
        if bridge in _installed:
            return
        callback = _OnShutdown(mod_wsgi, bridge, timeout)
        mod_wsgi.subscribe_shutdown(callback)
        _installed[bridge] = callback
    drain_timeout = bridge.options.drain_timeout
    recycle = exit_deadline(drain_timeout, timeout, "maximum_requests")
    stop = exit_deadline(drain_timeout, timeout, "shutdown_signal")
    if recycle < drain_timeout:
        _logger.warning(
            "asyncbridge: drain_timeout=%gs does not fit in mod_wsgi's shutdown-timeout=%gs; "
            "this process will drain for at most %gs when mod_wsgi recycles it (raise "
            "shutdown-timeout to at least %gs, and pass it to install(), to use the whole "
            "drain_timeout)",
            drain_timeout,
            timeout,
            recycle,
            drain_timeout + EXIT_MARGIN,
        )
    _logger.debug(
        "asyncbridge: mod_wsgi process group %r: drain deadline %gs when mod_wsgi recycles "
        "the process, %gs when Apache stops or restarts",
        getattr(mod_wsgi, "process_group", ""),
        recycle,
        stop,
    )


def exit_deadline(drain_timeout: float, shutdown_timeout: float, reason: str) -> float:
    """The drain deadline for a process that mod_wsgi stops for ``reason``.

    Args:
        drain_timeout: The bridge's ``drain_timeout``.
        shutdown_timeout: mod_wsgi's ``shutdown-timeout``; 0 means no reaper.
        reason: The ``shutdown_reason`` mod_wsgi passes to shutdown callbacks.
            ``"shutdown_signal"`` (Apache stopping or restarting, or a signal to the daemon)
            is also bounded by :data:`APACHE_KILL_AFTER`.

    Returns:
        ``min(drain_timeout, limit - EXIT_MARGIN)``, never below 0, where the limit is
        ``shutdown_timeout``, lowered to ``APACHE_KILL_AFTER`` for ``"shutdown_signal"``.
    """
    limit = shutdown_timeout if shutdown_timeout > 0 else math.inf
    if reason == "shutdown_signal":
        limit = min(limit, APACHE_KILL_AFTER)
    return max(0.0, min(drain_timeout, limit - EXIT_MARGIN))


def _check_timeout(value: float | None) -> float:
    if value is None:
        return DEFAULT_SHUTDOWN_TIMEOUT
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(
            f"shutdown_timeout must be a number of seconds, got {type(value).__qualname__}"
        )
    seconds = as_float(value)
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"shutdown_timeout must be a finite number >= 0, got {shown(value)}")
    return seconds


def _mod_wsgi_module() -> Any:
    # Inside Apache, `mod_wsgi` is the module built into the server. Outside it, the name may
    # still import: the pip package `mod_wsgi` (the mod_wsgi-express launcher), which has no
    # subscribe_shutdown.
    try:
        module = importlib.import_module("mod_wsgi")
    except ImportError:
        module = None
    if module is None or not callable(getattr(module, "subscribe_shutdown", None)):
        raise AsyncBridgeError(
            "asyncbridge.mod_wsgi.install() must run inside Apache mod_wsgi (in the WSGI "
            "script it loads); this process has no embedded mod_wsgi module with "
            "subscribe_shutdown. Outside mod_wsgi, do not call it: "
            "the bridge starts on first use and drains at interpreter exit."
        )
    return module


class _OnShutdown:
    """A ``mod_wsgi.subscribe_shutdown`` callback: drain this process's own loop, once."""

    def __init__(self, mod_wsgi: Any, bridge: Bridge, shutdown_timeout: float) -> None:
        self.mod_wsgi = mod_wsgi
        self.bridge = bridge
        self.shutdown_timeout = shutdown_timeout

    def __call__(self, event: str, **details: Any) -> None:
        # mod_wsgi calls every subscriber as callback(event_name, **event).
        if not self.bridge.owns_loop():
            return  # never used in this process (or a copy inherited through fork)
        reason = str(details.get("shutdown_reason", ""))
        deadline = exit_deadline(self.bridge.options.drain_timeout, self.shutdown_timeout, reason)
        # The wait counted up to the ms: with drain_timeout 10 the report's deadline reads 9.89s,
        # not 9.88734s (and the drain is never longer for it).
        waited = math.ceil(self._wait_for_requests(deadline * _REQUESTS_SHARE) * 1000) / 1000
        remaining = max(0.0, deadline - waited)
        _logger.info(
            "asyncbridge: mod_wsgi is stopping this process (%s); draining for at most %.3gs",
            reason or event,
            remaining,
        )
        self.bridge.shutdown(remaining)

    def _wait_for_requests(self, budget: float) -> float:
        """Wait up to ``budget`` seconds until no request has run for ``_QUIET`` seconds.

        Returns the time spent.
        """
        # mod_wsgi's dict of the requests in progress in this process.
        active = getattr(self.mod_wsgi, "active_requests", None)
        if not isinstance(active, dict):
            return 0.0  # it cannot tell: nothing to wait for
        started = now = time.monotonic()
        until = started + budget
        quiet_since = now
        while now < until:
            if active:
                quiet_since = now
            elif now - quiet_since >= _QUIET:
                break
            time.sleep(0.01)
            now = time.monotonic()
        return min(budget, now - started)
