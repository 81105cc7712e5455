"""Module-level functions: thin calls on this process's default :class:`Bridge`."""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Coroutine
from typing import Any, TypeVar

from ._bridge import Bridge
from ._stats import ShutdownReport, Stats

__all__ = [
    "configure",
    "default_bridge",
    "get_loop",
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
    return previous


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
