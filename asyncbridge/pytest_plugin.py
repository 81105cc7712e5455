"""pytest fixtures for testing application code that hands coroutines to asyncbridge.

pytest loads this module through the ``pytest11`` entry point whenever asyncbridge is installed.
It defines fixtures and nothing else: no hooks, no options, no loop started, until a test asks
for one of them.

``asyncbridge_bridge``
    A fresh :class:`RecordingBridge`, installed as the default bridge for the test (so
    ``asyncbridge.run_soon`` in application code uses it) and shut down afterwards. Coroutines
    run in the background as in production; call ``drain()`` before asserting.

``asyncbridge_eager``
    The same, but an :class:`EagerBridge`: ``run_soon`` and ``submit`` return only after the
    coroutine has finished, so a test can assert right after calling the code under test.

``asyncbridge_options``
    The options both fixtures build their bridge with (an empty dict). Override it in a
    ``conftest.py`` or a test module to change them, for example ``{"task_timeout": 0.5}``.
"""

from __future__ import annotations

import concurrent.futures
import threading
from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar

import pytest

from ._api import set_default_bridge
from ._bridge import Bridge
from ._config import options_from_env
from ._errors import AsyncBridgeError

__all__ = [
    "EagerBridge",
    "RecordingBridge",
    "asyncbridge_bridge",
    "asyncbridge_eager",
    "asyncbridge_options",
]

T = TypeVar("T")
B = TypeVar("B", bound="RecordingBridge")

#: Seconds ``drain()`` waits by default, and an eager ``run_soon`` waits for its coroutine.
DEFAULT_WAIT = 10.0
#: Drain deadline for the shutdown at the end of each test.
TEARDOWN_TIMEOUT = 5.0


class RecordingBridge(Bridge):
    """A :class:`~asyncbridge.Bridge` that remembers what went wrong, for assertions.

    Every exception of a ``run_soon`` coroutine (failed or timed out) is recorded in
    :attr:`errors` before any ``on_error`` hook given in the options is called. Exceptions of
    ``submit``/``run`` coroutines go to their caller, as usual, and are only counted.

    Args:
        **options: Any option of :meth:`~asyncbridge.Bridge.configure`.
    """

    def __init__(self, **options: Any) -> None:
        self.errors: list[tuple[str, BaseException]] = []
        self._errors_lock = threading.Lock()
        # An on_error from ASYNCBRIDGE_ON_ERROR still runs: the recorder takes the option's
        # place and calls it.
        self._user_on_error = options.pop("on_error", options_from_env().get("on_error"))
        super().__init__(**options, on_error=self._record)

    def _record(self, exc: BaseException, name: str) -> None:
        with self._errors_lock:
            self.errors.append((name, exc))
        if self._user_on_error is not None:
            self._user_on_error(exc, name)

    def configure(self, **options: Any) -> None:
        """Change options, as :meth:`~asyncbridge.Bridge.configure`; ``on_error`` still records."""
        if "on_error" in options:
            self._user_on_error = options.pop("on_error")
        super().configure(**options)

    def drain(self, timeout: float | None = DEFAULT_WAIT) -> bool:
        """Wait until nothing is pending or running, as :meth:`~asyncbridge.Bridge.drain`.

        Args:
            timeout: Seconds to wait (default 10); None waits for ever.

        Returns:
            True when the bridge went idle, False when the timeout passed first.
        """
        return super().drain(timeout)

    @property
    def exceptions(self) -> list[BaseException]:
        """The recorded exceptions of ``run_soon`` coroutines, oldest first."""
        with self._errors_lock:
            return [exc for _, exc in self.errors]

    @property
    def completed(self) -> int:
        """Coroutines that finished without an exception."""
        return self.stats().completed

    @property
    def failed(self) -> int:
        """Coroutines that raised."""
        return self.stats().failed

    @property
    def timed_out(self) -> int:
        """Coroutines cancelled for running past ``task_timeout``."""
        return self.stats().timed_out

    @property
    def cancelled(self) -> int:
        """Coroutines cancelled (by the caller, or at shutdown)."""
        return self.stats().cancelled


class EagerBridge(RecordingBridge):
    """A :class:`RecordingBridge` whose ``run_soon`` and ``submit`` wait for the coroutine.

    The coroutine still runs on the bridge loop (so :func:`asyncbridge.aiohttp.session` works and
    context variables are copied as in production), and its exception is still logged, counted
    and recorded instead of reaching the caller of ``run_soon``. Called from a coroutine already
    on the bridge loop, they cannot wait and behave as on a plain bridge.

    Args:
        eager_timeout: Seconds ``run_soon``/``submit`` wait for the coroutine before raising.
        **options: Any option of :meth:`~asyncbridge.Bridge.configure`.
    """

    def __init__(self, *, eager_timeout: float = DEFAULT_WAIT, **options: Any) -> None:
        super().__init__(**options)
        self.eager_timeout = eager_timeout

    def run_soon(self, coro: Coroutine[Any, Any, Any], /) -> bool:
        """Run ``coro`` on the bridge loop and return once nothing is left to run.

        Returns:
            True when the coroutine was accepted and ran (whatever its outcome), False when it
            was dropped.

        Raises:
            TimeoutError: The bridge did not go idle within ``eager_timeout`` seconds.
        """
        accepted = super().run_soon(coro)
        if accepted and not self.in_loop_thread() and not super().drain(self.eager_timeout):
            raise TimeoutError(
                f"eager run_soon: the coroutine did not finish within {self.eager_timeout}s; "
                "raise eager_timeout or use the asyncbridge_bridge fixture and drain()"
            )
        return accepted

    def submit(self, coro: Coroutine[Any, Any, T], /) -> concurrent.futures.Future[T]:
        """Run ``coro`` on the bridge loop and return its future, already done.

        Raises:
            TimeoutError: The coroutine did not finish within ``eager_timeout`` seconds.
        """
        future = super().submit(coro)
        if not self.in_loop_thread():
            done, _ = concurrent.futures.wait([future], timeout=self.eager_timeout)
            if not done:
                raise TimeoutError(
                    f"eager submit: the coroutine did not finish within {self.eager_timeout}s"
                )
        return future


def _installed(bridge: B) -> Iterator[B]:
    previous = set_default_bridge(bridge)
    try:
        yield bridge
    finally:
        try:
            report = bridge.shutdown(TEARDOWN_TIMEOUT)
        finally:
            set_default_bridge(previous)
        if report.abandoned:
            raise AsyncBridgeError(
                f"the test's bridge loop did not respond at teardown: {report}; a coroutine "
                "blocked it with synchronous code or ignored its cancellation"
            )


@pytest.fixture
def asyncbridge_options() -> dict[str, Any]:
    """Options for the bridges of ``asyncbridge_bridge`` and ``asyncbridge_eager``.

    Override this fixture to configure them, e.g. ``return {"task_timeout": 0.5}``.
    """
    return {}


@pytest.fixture
def asyncbridge_bridge(asyncbridge_options: dict[str, Any]) -> Iterator[RecordingBridge]:
    """A fresh :class:`RecordingBridge`, the default bridge for this test, shut down after it.

    Application code calling ``asyncbridge.run_soon`` uses it. Call ``drain()`` before
    asserting on ``completed``, ``failed``, ``timed_out`` or ``exceptions``.
    """
    yield from _installed(RecordingBridge(**asyncbridge_options))


@pytest.fixture
def asyncbridge_eager(asyncbridge_options: dict[str, Any]) -> Iterator[EagerBridge]:
    """A fresh :class:`EagerBridge`, the default bridge for this test, shut down after it.

    ``asyncbridge.run_soon`` returns after the coroutine finished, so assertions can follow it
    directly. Exceptions are recorded in ``exceptions``, not raised.
    """
    yield from _installed(EagerBridge(**asyncbridge_options))
