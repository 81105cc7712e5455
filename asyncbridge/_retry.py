"""Retrying a call with a budget: :func:`retrying`.

Why not stamina or tenacity: both are well kept, and both sleep with ``await asyncio.sleep`` inside
the coroutine being retried, which keeps the lane's concurrency slot for the whole sleep (the
defect a review found in a webhook sender: 16 failing endpoints starved the healthy ones). Neither
can ask "is this process draining, and until when?", so a retry would sleep past the drain
deadline and be cancelled there instead of failing with its own exception. Hooking both in
(a custom sleep and a custom stop) leaves little of the library, and the core stays
standard-library only. What is here is the part that needs the loop's cooperation: a sleep that
gives the slot back and wakes when a drain begins.
"""

from __future__ import annotations

import asyncio
import email.utils
import inspect
import math
import random
import sys
import time
import types
from collections.abc import Awaitable, Callable, Collection, Coroutine
from typing import Any, TypeVar, cast

from . import _scheduler
from ._inputs import as_float, coroutine_name, shown

__all__ = ["RETRY_STATUSES", "backoff", "retry_after", "retrying", "worth_retrying"]

T = TypeVar("T")

#: HTTP statuses worth another try by default: 429 Too Many Requests and every 5xx.
RETRY_STATUSES: frozenset[int] = frozenset({429, *range(500, 600)})

# Full jitter (AWS Architecture Blog, "Exponential Backoff And Jitter"): retry n waits a uniform
# random time in [0, min(CAP, BASE * 2**(n-1))]: up to 0.2 s, 0.4 s, 0.8 s, 1.6 s for the
# default 5 attempts. A Retry-After the server sent is waited in full, with the jitter on top.
BASE = 0.2
CAP = 10.0

_monotonic = time.monotonic
_random = random.random


def backoff(retry: int) -> float:
    """The jittered wait before retry number ``retry`` (1 for the first retry), in seconds."""
    return _random() * min(CAP, BASE * 2.0 ** min(retry - 1, 64))


def retry_after(exc: BaseException) -> float | None:
    """Seconds the server asked us to wait (``Retry-After``: seconds or an HTTP date), if any.

    Reads ``exc.headers`` as aiohttp's ``ClientResponseError`` carries them; any object with a
    ``headers`` mapping works.
    """
    headers = getattr(exc, "headers", None)
    if headers is None:
        return None
    value: object = None
    try:
        value = headers.get("Retry-After")
        if value is None and hasattr(headers, "items"):  # a plain dict: case-insensitive
            value = next((v for k, v in headers.items() if str(k).lower() == "retry-after"), None)
    except (AttributeError, TypeError):
        return None
    if not isinstance(value, str):
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        seconds = when.timestamp() - time.time()
    if not math.isfinite(seconds):
        return None
    return max(0.0, seconds)


def worth_retrying(exc: BaseException, statuses: Collection[int] = RETRY_STATUSES) -> bool:
    """The default test: a connection error, a timeout, or an HTTP status in ``statuses``.

    An HTTP status is read from ``exc.status`` (aiohttp's ``ClientResponseError``). Connection
    errors are :class:`ConnectionError` and aiohttp's ``ClientConnectionError`` (refused, reset,
    server disconnected); timeouts are :class:`TimeoutError` (aiohttp's timeouts are subclasses).
    """
    status = getattr(exc, "status", None)
    if isinstance(status, int) and not isinstance(status, bool):
        return status in statuses
    if isinstance(exc, ConnectionError | TimeoutError):
        return True
    aiohttp = sys.modules.get("aiohttp")  # no aiohttp imported: none of its errors can exist
    client_connection_error = getattr(aiohttp, "ClientConnectionError", None)
    return isinstance(client_connection_error, type) and isinstance(exc, client_connection_error)


def retrying(
    fn: Callable[..., Awaitable[T]],
    /,
    *args: Any,
    attempts: int = 5,
    budget: float = 30.0,
    retry_statuses: Collection[int] = RETRY_STATUSES,
    retry_if: Callable[[BaseException], bool] | None = None,
    **kwargs: Any,
) -> Coroutine[Any, Any, T]:
    """A coroutine that awaits ``fn(*args, **kwargs)`` and retries what is worth retrying.

    Hand it to ``run_soon`` (or a lane's): ``lane.run_soon(retrying(post_json, url, payload))``.
    Between tries it waits with exponential backoff and full jitter, at least as long as a
    ``Retry-After`` header asks. While it waits it holds no concurrency slot of its lane: other
    work runs in its place, and it takes a slot again before the next try. Each retry counts in
    ``stats().retries``. Logs and reports name it after ``fn``.

    It stops, and the last exception becomes the job's failure, when ``attempts`` tries are
    made, when the next try would start more than ``budget`` seconds after the first, when the
    exception is not worth retrying, or when the process is draining (shutdown) and the next try
    would end past the drain deadline (judged by how long the last try took). A drain that begins
    while it waits wakes it to decide at once.

    Args:
        fn: An ``async def`` function (or anything returning an awaitable).
        *args: Passed to ``fn``.
        attempts: Tries in all, the first included (at least 1).
        budget: Seconds from the first try after which no new try starts.
        retry_statuses: HTTP statuses (``exc.status``) worth another try; 429 and 5xx by default.
        retry_if: ``retry_if(exc) -> bool`` decides alone instead of the default test
            (connection errors, timeouts, and ``retry_statuses``).
        **kwargs: Passed to ``fn``.

    Returns:
        A coroutine object whose result is ``fn``'s.

    Raises:
        TypeError: ``fn`` is not callable, or ``attempts`` or ``budget`` has the wrong type.
        ValueError: ``attempts`` below 1, or ``budget`` negative or not finite.
    """
    if inspect.iscoroutine(fn):
        raise TypeError(
            "retrying() takes the async function and its arguments, not a coroutine (which can "
            f"be awaited only once): write retrying({coroutine_name(fn)}, ...)"
        )
    if not callable(fn):
        raise TypeError(f"retrying() takes an async function first, got {type(fn).__qualname__}")
    if isinstance(attempts, bool) or not isinstance(attempts, int):
        raise TypeError(f"attempts must be an int, got {type(attempts).__name__} {attempts!r}")
    if attempts < 1:
        raise ValueError(f"attempts must be at least 1, got {attempts}")
    if isinstance(budget, bool) or not isinstance(budget, int | float):
        raise TypeError(f"budget must be a number of seconds, got {type(budget).__name__}")
    if not math.isfinite(as_float(budget)) or budget < 0:
        raise ValueError(
            f"budget must be a finite number of seconds, at least 0, got {shown(budget)}"
        )
    statuses = frozenset(retry_statuses)

    def default_test(exc: BaseException) -> bool:
        return worth_retrying(exc, statuses)

    test = default_test if retry_if is None else retry_if
    coro = _retrying(fn, args, kwargs, attempts, float(budget), test)
    name = coroutine_name(fn)
    named = cast(types.CoroutineType, coro)  # type: ignore[type-arg]
    named.__qualname__ = name  # the job is fn's, for logs, reports and on_error
    named.__name__ = str(getattr(fn, "__name__", name))
    return coro


async def _retrying(
    fn: Callable[..., Awaitable[T]],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    attempts: int,
    budget: float,
    test: Callable[[BaseException], bool],
) -> T:
    lane = _scheduler.current_lane()
    rt = _scheduler.current_runtime() if lane is None else lane.runtime
    started = _monotonic()
    tries = 0
    while True:
        tries += 1
        if tries > 1 and rt is not None:
            # In a task a job spawned, the lane is unknown: the default lane counts it.
            _scheduler.count_retry(rt if lane is None else lane)
        began = _monotonic()
        try:
            return await fn(*args, **kwargs)
        except Exception as exc:
            if tries >= attempts or not test(exc):
                raise
            last = exc
        took = _monotonic() - began
        wait = backoff(tries)
        asked = retry_after(last)
        if asked is not None:
            wait += asked
        wake = _monotonic() + wait
        if (
            wake > started + budget
            or not await _rest(lane, rt, wake, took)
            or _monotonic() > started + budget  # the timer, or the slot, came back late
        ):
            raise last


async def _rest(lane: Any, rt: Any, wake: float, took: float) -> bool:
    """Wait until ``wake`` without a slot; False when a drain deadline leaves no time to retry.

    ``lane`` is the scheduler's lane of the running job (None in a task the job spawned, or
    outside a bridge loop), ``rt`` the bridge loop's runtime (None outside one).
    """
    if rt is None:
        await asyncio.sleep(max(0.0, wake - _monotonic()))
        return True
    if _too_late(rt, wake, took):
        return False
    if lane is not None:
        _scheduler.give_back_slot(lane)
    try:
        while True:
            remaining = wake - _monotonic()
            if remaining <= 0:
                break
            if _too_late(rt, wake, took):
                if lane is not None:
                    _scheduler.retake_slot(lane)
                return False
            await _scheduler.rest(rt, remaining)
    except BaseException:
        if lane is not None:
            _scheduler.retake_slot(lane)  # the task ends now; its end gives the slot back
        raise
    if lane is not None:
        await _scheduler.take_slot_back(lane)
        # A drain that began while this waited for the slot did not wake it: judge again. (The
        # job ends holding its slot, and its end gives the slot back.)
        if _too_late(rt, _monotonic(), took):
            return False
    return True


def _too_late(rt: Any, wake: float, took: float) -> bool:
    deadline: float | None = rt.drain_deadline
    return deadline is not None and wake + took > deadline
