"""Blocking until a coroutine handed to the bridge finishes: ``Bridge.run`` and ``Lane.run``."""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from ._errors import AsyncBridgeError
from ._inputs import timeout_arg
from ._log import close_quietly

__all__ = ["run_and_wait"]

T = TypeVar("T")


def run_and_wait(
    name: str,
    coro: Coroutine[Any, Any, T],
    timeout: float | None,
    *,
    submit: Callable[[Coroutine[Any, Any, T]], concurrent.futures.Future[T]],
    bridge_loop: asyncio.AbstractEventLoop | None,
    on_loop_thread: bool,
) -> T:
    """Hand ``coro`` to ``submit`` and wait for its result; ``name`` is the caller, for errors.

    Raises:
        TimeoutError: The timeout passed; the coroutine has been told to cancel.
        AsyncBridgeError: Called from the bridge's own loop thread or from inside any running
            event loop, where blocking would deadlock.
        BaseException: Whatever the coroutine raised.
    """
    if on_loop_thread:
        close_quietly(coro)
        raise AsyncBridgeError(
            f"{name}() was called from the bridge's own event loop thread, where blocking "
            "would deadlock; use `await` on the coroutine instead"
        )
    running = asyncio._get_running_loop()
    # Under gevent with the bridge loop in a greenlet, asyncio's running-loop slot is per OS
    # thread, so request greenlets see the bridge loop as "running": that one may block.
    if running is not None and running is not bridge_loop:
        close_quietly(coro)
        raise AsyncBridgeError(
            f"{name}() was called from a thread with a running event loop, which it would "
            "block; just `await` the coroutine (or use run_soon() to fire and forget)"
        )
    try:
        wait = timeout_arg(name, timeout)
    except (TypeError, ValueError):
        close_quietly(coro)
        raise
    future = submit(coro)
    try:
        return future.result(wait)
    except concurrent.futures.TimeoutError:
        future.cancel()
        raise TimeoutError(
            f"{name}() timed out after {timeout}s; the coroutine was cancelled"
        ) from None
    except BaseException:
        # Interrupted while waiting (KeyboardInterrupt, SystemExit from a signal handler):
        # nobody will read the result, so the coroutine must not run on unseen.
        future.cancel()
        raise
