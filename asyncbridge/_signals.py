"""Signal handling for plain processes (scripts, dev servers). Never used inside servers."""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Callable
from types import FrameType

from ._api import default_bridge
from ._inputs import timeout_arg

__all__ = ["EXIT_SIGNALS", "ignore_exit_signals", "install_signal_handlers"]

logger = logging.getLogger("asyncbridge")

_Handler = Callable[[int, FrameType | None], object] | int | signal.Handlers | None

EXIT_SIGNALS: tuple[int, ...] = tuple(
    getattr(signal, name)
    for name in ("SIGINT", "SIGTERM", "SIGQUIT", "SIGHUP")
    if hasattr(signal, name)
)


def ignore_exit_signals(signals: tuple[int, ...] = EXIT_SIGNALS) -> None:
    """Ignore further exit signals in a process that is draining on its way out.

    A second signal (Ctrl-C or systemd signalling the whole process group, then the server's
    master sending its own) would otherwise run an exit handler inside the drain and cut it
    short, losing its report. The drain is bounded, and SIGKILL still ends the process.
    Only the main thread may change signal dispositions; elsewhere this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        return
    for signum in signals:
        try:
            signal.signal(signum, signal.SIG_IGN)
        except (OSError, ValueError):
            pass


def install_signal_handlers(
    signals: tuple[int, ...] = (signal.SIGINT, signal.SIGTERM), *, timeout: float | None = None
) -> None:
    """Make SIGINT and SIGTERM drain the default bridge, then do what they did before.

    For plain processes only: gunicorn and uWSGI install their own handlers, and their exit hooks
    drain (see :mod:`asyncbridge.gunicorn` and :mod:`asyncbridge.uwsgi`). After the drain, the
    previous handler runs: Python's default SIGINT handler raises ``KeyboardInterrupt``; a
    default SIGTERM ends the process with that signal. While the drain runs, further exit
    signals are ignored (a second Ctrl-C cannot cut it short; it lasts at most the deadline plus
    about a second); afterwards every signal does what it did before. A signal that is ignored
    (``SIG_IGN``, as SIGINT is for background jobs) or handled in C is left alone.

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
    timeout_arg("install_signal_handlers", timeout)  # a bad deadline fails now, not at exit
    previous: dict[int, _Handler] = {}
    for signum in signals:
        current = signal.getsignal(signum)
        if current in (signal.SIG_IGN, None):
            # Ignored on purpose (a background job's SIGINT) or owned by C code: leave it.
            continue
        previous[signum] = current
    for signum in previous:
        signal.signal(signum, _make_handler(previous, timeout))


def _make_handler(
    handlers: dict[int, _Handler], timeout: float | None
) -> Callable[[int, FrameType | None], None]:
    def handler(signum: int, frame: FrameType | None) -> None:
        bridge = default_bridge()
        # The signal interrupted this very thread inside start() or shutdown() (a program that
        # calls shutdown() itself, at its end): waiting here would wait for ourselves. Act once
        # that call ends, with its final report logged first.
        if bridge._defer_while_busy(lambda: handler(signum, frame)):
            return
        logger.info("asyncbridge: %s received, draining", signal.Signals(signum).name)
        ignore_exit_signals(tuple(handlers))  # a second Ctrl-C must not cut the drain short
        bridge.shutdown(timeout)
        for other, before in handlers.items():  # from now on, signals do what they did before
            signal.signal(other, before if before is not None else signal.SIG_DFL)
        previous = handlers[signum]
        if callable(previous):
            previous(signum, frame)
        elif previous == signal.SIG_DFL:
            os.kill(os.getpid(), signum)

    return handler
