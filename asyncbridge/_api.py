"""Module-level functions: thin calls on this process's default :class:`Bridge`."""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from ._batcher import Batcher
from ._bridge import Bridge
from ._lane import Lane
from ._stats import ShutdownReport, Stats

__all__ = [
    "batcher",
    "configure",
    "default_bridge",
    "get_loop",
    "lane",
    "run",
    "run_soon",
    "set_default_bridge",
    "shutdown",
    "start",
    "stats",
    "submit",
]

T = TypeVar("T")

_default = Bridge()
# The lanes made by lane(): they follow the default bridge when set_default_bridge() replaces it,
# so that a module-level `PUSH = asyncbridge.lane("push")` reaches a test's bridge too.
_lanes: dict[str, Lane] = {}


def default_bridge() -> Bridge:
    """The bridge that the module-level functions use."""
    return _default


def set_default_bridge(bridge: Bridge) -> Bridge:
    """Make ``bridge`` the one the module-level functions use, and return the previous one.

    For tests (the pytest plugin does this) and for applications that build their own.
    """
    global _default
    if not isinstance(bridge, Bridge):
        raise TypeError(f"set_default_bridge() takes a Bridge, got {type(bridge).__qualname__}")
    previous, _default = _default, bridge
    for name, lane in list(_lanes.items()):
        if previous._lanes.get(name) is lane:
            del previous._lanes[name]
        bridge._lanes.setdefault(name, lane)
        lane._rebind(bridge)
    return previous


def lane(name: str, /, **options: Any) -> Lane:
    """This process's lane ``name``, made on the first call: its own backlog, limit and counters.

    Give each destination its own lane, so that one that is down or slow fills its own backlog
    and holds its own concurrency slots only. The module-level functions use the lane
    ``"default"``; every lane runs on the same loop, drains under the same shutdown deadline, and
    is counted in :func:`stats` (``stats().lanes``). A lane follows the default bridge (see
    :func:`set_default_bridge`) and the process across ``fork``: the child's first use makes the
    child's own, with the same options.

    Args:
        name: The lane's name.
        **options: ``max_pending``, ``max_concurrency``, ``on_full``, ``block_timeout`` and
            ``task_timeout``; each one not given is the bridge's (and follows its
            :func:`configure`).

    Returns:
        The :class:`Lane`, the same object for the same name.

    Raises:
        TypeError: An option a lane cannot set, or a value of the wrong type.
        ValueError: A value out of range, options for ``"default"``, or options that differ
            from those the lane was made with.
    """
    return _following(name, options)


def _following(name: str, options: dict[str, Any]) -> Lane:
    made = _default.lane(name, **options)
    return _lanes.setdefault(name, made)


def batcher(
    flush: Callable[[list[T]], Coroutine[Any, Any, object]],
    /,
    *,
    max_size: int = 100,
    max_delay: float = 0.05,
    lane: Lane | str | None = None,
) -> Batcher[T]:
    """Gather items from any thread and ``await flush(items)`` on the loop, in groups.

    ``Batcher.add(item)`` costs about what :func:`run_soon` costs. A flush starts when
    ``max_size`` items wait, or when the oldest has waited ``max_delay`` seconds, and runs in
    ``lane`` (holding one of its concurrency slots). Accepted, completed, failed and dropped count
    items: a failed flush fails all its items, and the lane's ``max_pending`` and ``on_full``
    apply to each item. At shutdown, what waits is flushed at once, within the drain deadline.

    Args:
        flush: An ``async def`` function taking a list of items.
        max_size: Items per flush, at most (at least 1).
        max_delay: Seconds the oldest item may wait before a flush starts (0 or more).
        lane: The lane (or its name) whose slots and counters the flushes use; None for
            ``"default"``.

    Returns:
        The :class:`Batcher`.

    Raises:
        TypeError: ``flush`` is not an async function, or an argument has the wrong type.
        ValueError: ``max_size`` below 1, or ``max_delay`` negative.
    """
    if lane is None or isinstance(lane, str):
        lane = _following("default" if lane is None else lane, {})
    return Batcher(flush, lane, max_size=max_size, max_delay=max_delay)


def run_soon(coro: Coroutine[Any, Any, Any], /) -> bool:
    """Fire and forget ``coro`` on this process's loop. See :meth:`Bridge.run_soon`."""
    return _default.run_soon(coro)


def submit(coro: Coroutine[Any, Any, T], /) -> concurrent.futures.Future[T]:
    """Schedule ``coro`` and get a future for its result. See :meth:`Bridge.submit`."""
    return _default.submit(coro)


def run(coro: Coroutine[Any, Any, T], /, *, timeout: float | None = None) -> T:
    """Run ``coro`` on the bridge loop and wait for its result. See :meth:`Bridge.run`."""
    return _default.run(coro, timeout=timeout)


def start() -> None:
    """Start this process's loop now; idempotent. See :meth:`Bridge.start`."""
    _default.start()


def shutdown(timeout: float | None = None, *, log: bool = True) -> ShutdownReport:
    """Drain and stop this process's loop; never raises. See :meth:`Bridge.shutdown`."""
    return _default.shutdown(timeout, log=log)


def configure(**options: Any) -> None:
    """Change the default bridge's options. See :meth:`Bridge.configure`."""
    _default.configure(**options)


def stats() -> Stats:
    """A consistent snapshot of this process's accounting. See :meth:`Bridge.stats`."""
    return _default.stats()


def get_loop() -> asyncio.AbstractEventLoop:
    """This process's bridge loop, started if need be. See :meth:`Bridge.get_loop`."""
    return _default.get_loop()
