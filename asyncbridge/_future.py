"""The future :meth:`Bridge.submit` returns: its ``cancel()`` reaches the running coroutine."""

from __future__ import annotations

import asyncio
import concurrent.futures
from typing import Any, TypeVar

__all__ = ["BridgeFuture"]

T = TypeVar("T")

# concurrent.futures' private state names, stable since Python 3.2; BridgeFuture needs them to
# mark a running future cancelled.
_FINISHED = getattr(concurrent.futures._base, "FINISHED", "FINISHED")
_CANCELLED = getattr(concurrent.futures._base, "CANCELLED", "CANCELLED")
_CANCELLED_AND_NOTIFIED = getattr(
    concurrent.futures._base, "CANCELLED_AND_NOTIFIED", "CANCELLED_AND_NOTIFIED"
)


class BridgeFuture(concurrent.futures.Future[T]):
    """A future whose ``cancel()`` also cancels the coroutine once it runs on the loop.

    ``cancel()`` on a running coroutine asks its task to cancel and returns True; the future
    becomes cancelled when the task does (a coroutine that swallows the cancellation finishes
    normally and the future carries its result, as with asyncio).
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self._loop = loop
        self._task: asyncio.Task[Any] | None = None
        self._cancel_requested = False

    def cancel(self) -> bool:
        if super().cancel():
            return True
        if self.done():
            return False
        self._cancel_requested = True  # read by the loop if the task does not exist yet
        task = self._task
        if task is not None:
            try:
                self._loop.call_soon_threadsafe(task.cancel)
            except RuntimeError:  # the loop is closed: shutdown has settled the task already
                return False
        return True

    def _set_cancelled(self) -> None:
        """Put a running future in the cancelled state (concurrent.futures has no public way)."""
        with self._condition:
            if self._state in (_FINISHED, _CANCELLED, _CANCELLED_AND_NOTIFIED):
                return
            self._state = _CANCELLED_AND_NOTIFIED
            for waiter in self._waiters:
                waiter.add_cancelled(self)
            self._condition.notify_all()
        self._invoke_callbacks()  # type: ignore[attr-defined]
