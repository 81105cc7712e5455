"""Run asyncbridge under Waitress: make SIGTERM stop Waitress the way Ctrl-C does.

Waitress is one process with request threads. On Ctrl-C (SIGINT) it stops accepting, lets the
requests in progress finish (up to 5 s), returns from ``serve()``, and Python's ``atexit``
drains the bridge. SIGTERM, which systemd, Docker and ``kill`` send, has no handler: the
process dies at once and the work in flight is lost. Call :func:`install` before serving::

    import asyncbridge.waitress

    asyncbridge.waitress.install()
    waitress.serve(application, host="127.0.0.1", port=8000)

This module does not import Waitress.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType

from ._errors import AsyncBridgeError
from ._signals import ignore_exit_signals

__all__ = ["install"]


def install() -> None:
    """Make SIGTERM end the process as Ctrl-C does: through a clean exit, then ``atexit``.

    SIGTERM then raises ``SystemExit`` in the main thread. Waitress catches it like
    ``KeyboardInterrupt``: it stops accepting, waits up to 5 s for the requests in progress
    (their hand-offs are accepted), and returns from ``serve()``; the interpreter then exits
    normally and asyncbridge's ``atexit`` fallback drains the bridge with ``drain_timeout``.
    Outside Waitress the same happens wherever the main thread is. Further exit signals
    (SIGTERM, SIGINT, SIGQUIT, SIGHUP) are then ignored, so that a second one cannot cut the
    exit and its drain short; both are bounded. Calling it again changes nothing.

    Prefer it to :func:`asyncbridge.install_signal_handlers` under Waitress: that drains at
    once, inside the signal handler, while request threads still run (what they hand over
    then is refused), and then lets SIGTERM kill the process, cutting those requests off.

    Raises:
        AsyncBridgeError: Not called from the main thread, where Python requires signal
            handlers to be installed.
    """
    if threading.current_thread() is not threading.main_thread():
        raise AsyncBridgeError(
            "asyncbridge.waitress.install() must be called from the main thread (a Python "
            "rule for signal handlers): call it in your serve script or app module"
        )
    signal.signal(signal.SIGTERM, _exit_on_sigterm)


def _exit_on_sigterm(signum: int, frame: FrameType | None) -> None:
    # Once: a second signal (systemd signalling the whole group, a Ctrl-C) would raise inside
    # Waitress's wait for its requests, or inside the drain.
    ignore_exit_signals()
    raise SystemExit(0)
