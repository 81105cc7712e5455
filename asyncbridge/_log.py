"""The ``asyncbridge`` logger, and calling user code (hooks, ``close()``) safely."""

from __future__ import annotations

import logging
from collections.abc import Callable

from ._inputs import coroutine_name

__all__ = ["call_hook", "close_quietly", "logger"]

logger = logging.getLogger("asyncbridge")


def close_quietly(coro: object) -> None:
    """Close a coroutine that will never run, so that it warns of nothing; log what it raises."""
    close = getattr(coro, "close", None)
    if close is not None:
        try:
            close()
        except Exception:
            logger.exception("asyncbridge could not close %s", coroutine_name(coro))


def call_hook(
    hook: Callable[..., object], what: str, *args: object, loop_side: bool = False
) -> None:
    """Call a user hook (``on_error``, ``on_drop``); an exception is logged and ignored.

    On the loop side (``loop_side``) even ``SystemExit`` and ``KeyboardInterrupt`` are: raised
    there, they would escape the job's task and skip its bookkeeping, stalling the backlog. In
    the caller's thread they reach the caller, as they would from any call.
    """
    try:
        hook(*args)
    except BaseException as exc:
        if not loop_side and not isinstance(exc, Exception):
            raise
        # The hook's name, not its repr: a functools.partial's repr shows the arguments bound
        # to it, which may be credentials.
        logger.exception("asyncbridge %s hook %s raised; ignored", what, coroutine_name(hook))
