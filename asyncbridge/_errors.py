"""The exceptions asyncbridge raises. Every one is an :class:`AsyncBridgeError`."""

from __future__ import annotations

__all__ = ["AsyncBridgeError", "BacklogFull", "BridgeClosed"]


class AsyncBridgeError(RuntimeError):
    """Base class of every error asyncbridge raises on purpose."""


class BacklogFull(AsyncBridgeError):
    """The bridge already holds ``max_pending`` unfinished coroutines.

    Raised by :func:`asyncbridge.submit` always, and by :func:`asyncbridge.run_soon` when
    ``on_full="raise"``. The coroutine was closed and counted as dropped (reason ``"full"``).
    """


class BridgeClosed(AsyncBridgeError):
    """The bridge was shut down in this process and accepts no more work."""
