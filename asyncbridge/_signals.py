"""Signal handling for plain processes (scripts, dev servers). Never used inside servers."""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Callable
from types import FrameType

from ._api import default_bridge

__all__ = ["install_signal_handlers"]

logger = logging.getLogger("asyncbridge")

_Handler = Callable[[int, FrameType | None], object] | int | signal.Handlers | None


def install_signal_handlers(
    signals: tuple[int, ...] = (signal.SIGINT, signal.SIGTERM), *, timeout: float | None = None
) -> None:
    """Make SIGINT and SIGTERM drain the default bridge, then do what they did before.

    For plain processes only: gunicorn and uWSGI install their own handlers, and their exit hooks
    drain (see :mod:`asyncbridge.gunicorn` and :mod:`asyncbridge.uwsgi`). After the drain, the
    previous handler runs: Python's default SIGINT handler raises ``KeyboardInterrupt``; a
    default SIGTERM ends the process with that signal.

    Args:
        signals: The signals to handle.
        timeout: The drain deadline; defaults to the bridge's ``drain_timeout``.

    Raises:
        AsyncBridgeError: Not called from the main thread, where Python requires signal handlers
            to be installed.
    """
    if threading.current_thread() is not threading.main_thread():
        from ._errors import AsyncBridgeError

        raise AsyncBridgeError(
            "install_signal_handlers() must be called from the main thread (a Python rule)"
        )
    for signum in signals:
        previous = signal.getsignal(signum)
        signal.signal(signum, _make_handler(previous, timeout))


def _make_handler(
    previous: _Handler, timeout: float | None
) -> Callable[[int, FrameType | None], None]:
    def handler(signum: int, frame: FrameType | None) -> None:
        logger.info("asyncbridge: %s received, draining", signal.Signals(signum).name)
        default_bridge().shutdown(timeout)
        if callable(previous):
            previous(signum, frame)
        elif previous == signal.SIG_DFL:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)

    return handler
