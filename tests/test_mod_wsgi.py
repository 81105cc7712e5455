"""asyncbridge.mod_wsgi without Apache: a stand-in ``mod_wsgi`` module in sys.modules.

The real server is exercised in tests/e2e/test_mod_wsgi.py; these pin down the refusal outside
mod_wsgi, the registration (once, from any thread), the deadline arithmetic, the wait for
requests still running, and that only the owning process drains, once.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import re
import sys
import threading
import time
import types
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import asyncbridge.mod_wsgi
from asyncbridge import AsyncBridgeError, Bridge
from asyncbridge.mod_wsgi import (
    _QUIET,
    APACHE_KILL_AFTER,
    DEFAULT_SHUTDOWN_TIMEOUT,
    EXIT_MARGIN,
    exit_deadline,
    install,
)

from .helpers import FORK_WARNING, wait_child

_Callback = Callable[..., object]


class FakeModWsgi(types.ModuleType):
    """The parts of mod_wsgi's embedded module that install() reads and calls."""

    def __init__(self) -> None:
        super().__init__("mod_wsgi")
        self.process_group = "app"
        self.application_group = ""
        self.shutdown_callbacks: list[_Callback] = []
        self.active_requests: dict[str, object] = {}

    def subscribe_shutdown(self, callback: _Callback) -> _Callback:
        self.shutdown_callbacks.append(callback)
        return callback

    def stop(self, reason: str) -> None:
        """What mod_wsgi does when it stops the process: callback(event, **event_dict)."""
        for callback in list(self.shutdown_callbacks):
            callback("process_stopping", shutdown_reason=reason)


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeModWsgi:
    module = FakeModWsgi()
    monkeypatch.setitem(sys.modules, "mod_wsgi", module)
    return module


@pytest.fixture
def bridge() -> Iterator[Bridge]:
    b = Bridge(drain_timeout=10)
    try:
        yield b
    finally:
        b.shutdown(5)


def _deadline(log: str) -> float:
    """The deadline the shutdown report in ``log`` names, in seconds."""
    found = re.findall(r"\(deadline ([0-9.]+)s\)", log)
    assert len(found) == 1, log
    return float(found[0])


async def sleep_then(seconds: float, done: list[float]) -> None:
    await asyncio.sleep(seconds)
    done.append(seconds)


def test_refuses_outside_mod_wsgi_and_says_what_to_do(
    monkeypatch: pytest.MonkeyPatch, bridge: Bridge
) -> None:
    monkeypatch.setitem(sys.modules, "mod_wsgi", None)  # `import mod_wsgi` raises ImportError
    with pytest.raises(AsyncBridgeError, match="must run inside Apache mod_wsgi"):
        install(bridge)


def test_refuses_the_pip_launcher_package_that_is_not_the_embedded_module(
    monkeypatch: pytest.MonkeyPatch, bridge: Bridge
) -> None:
    # Outside Apache, `import mod_wsgi` finds the pip package (mod_wsgi-express's launcher).
    launcher = types.ModuleType("mod_wsgi")
    launcher.__path__ = []
    monkeypatch.setitem(sys.modules, "mod_wsgi", launcher)
    with pytest.raises(AsyncBridgeError, match="subscribe_shutdown"):
        install(bridge)


@pytest.mark.parametrize(
    ("value", "error"),
    [("5", TypeError), (True, TypeError), (-1, ValueError), (math.inf, ValueError)],
)
def test_shutdown_timeout_must_be_a_finite_number(
    fake: FakeModWsgi, bridge: Bridge, value: Any, error: type[Exception]
) -> None:
    with pytest.raises(error, match="shutdown_timeout"):
        install(bridge, shutdown_timeout=value)
    assert fake.shutdown_callbacks == []


def test_registers_one_callback_and_starts_nothing(fake: FakeModWsgi, bridge: Bridge) -> None:
    install(bridge)
    install(bridge, shutdown_timeout=30)  # idempotent: the first registration stays
    assert len(fake.shutdown_callbacks) == 1
    assert bridge.stats().loop_running is False  # starts on first use, as in a plain process


def test_install_from_a_request_thread_works(fake: FakeModWsgi, bridge: Bridge) -> None:
    # mod_wsgi may load the WSGI script lazily, in the thread of the first request.
    errors: list[BaseException] = []

    def load_script() -> None:
        try:
            install(bridge)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=load_script) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert errors == []
    assert len(fake.shutdown_callbacks) == 1


def test_recycle_drains_accepted_work_within_shutdown_timeout(
    fake: FakeModWsgi, bridge: Bridge, caplog: pytest.LogCaptureFixture
) -> None:
    install(bridge, shutdown_timeout=15)
    done: list[float] = []
    assert bridge.run_soon(sleep_then(0.3, done))
    with caplog.at_level(logging.INFO, logger="asyncbridge"):
        fake.stop("maximum_requests")
    assert done == [0.3]
    stats = bridge.stats()
    assert (stats.accepted, stats.completed, stats.loop_running) == (1, 1, False)
    assert "mod_wsgi is stopping this process (maximum_requests)" in caplog.text
    # min(drain_timeout 10, 15 - 1.5), less the wait until no request has run for 0.1 s
    assert 10 - _QUIET - 0.1 <= _deadline(caplog.text) <= 10 - _QUIET


def test_apache_stop_cancels_what_outlasts_its_three_seconds_and_reports_it(
    fake: FakeModWsgi, bridge: Bridge, caplog: pytest.LogCaptureFixture
) -> None:
    install(bridge, shutdown_timeout=15)
    done: list[float] = []
    assert bridge.run_soon(sleep_then(0.1, done))
    assert bridge.run_soon(sleep_then(30, done))
    started = time.monotonic()
    with caplog.at_level(logging.INFO, logger="asyncbridge"):
        fake.stop("shutdown_signal")
    elapsed = time.monotonic() - started
    # Apache SIGKILLs its daemons 3 s after it asked them to stop: the drain ends before that.
    assert APACHE_KILL_AFTER - EXIT_MARGIN <= elapsed < APACHE_KILL_AFTER
    assert done == [0.1]
    stats = bridge.stats()
    assert (stats.accepted, stats.completed, stats.cancelled) == (2, 1, 1)
    assert 1.5 - _QUIET - 0.1 <= _deadline(caplog.text) <= 1.5 - _QUIET
    assert "cancelled at the deadline: sleep_then" in caplog.text


def test_waits_for_requests_still_running_so_their_work_is_drained_too(
    fake: FakeModWsgi, bridge: Bridge
) -> None:
    # mod_wsgi calls the shutdown callbacks before it waits for its request threads.
    install(bridge, shutdown_timeout=15)
    bridge.start()
    fake.active_requests["r1"] = object()
    done: list[float] = []
    handed: list[bool] = []

    def request() -> None:
        time.sleep(0.3)
        handed.append(bridge.run_soon(sleep_then(0.1, done)))
        del fake.active_requests["r1"]

    t = threading.Thread(target=request)
    t.start()
    fake.stop("maximum_requests")
    t.join(10)
    assert handed == [True]  # not refused as "closed": the drain waited for the request
    assert done == [0.1]
    assert bridge.stats().dropped["closed"] == 0


def test_a_request_that_shows_up_just_after_the_stop_began_hands_its_work_over(
    fake: FakeModWsgi, bridge: Bridge
) -> None:
    # A request thread that checked mod_wsgi's stop flag just before the stop accepts its
    # connection all the same; its request is listed in active_requests only once Python runs
    # it, a moment after the callback began. The drain waits until none has run for _QUIET.
    install(bridge, shutdown_timeout=15)
    bridge.start()
    done: list[float] = []
    handed: list[bool] = []

    def request() -> None:
        time.sleep(_QUIET / 3)
        fake.active_requests["late"] = object()
        time.sleep(0.2)
        handed.append(bridge.run_soon(sleep_then(0.1, done)))
        del fake.active_requests["late"]

    t = threading.Thread(target=request)
    t.start()
    started = time.monotonic()
    fake.stop("maximum_requests")
    elapsed = time.monotonic() - started
    t.join(10)
    assert handed == [True]
    assert done == [0.1]
    assert bridge.stats().dropped["closed"] == 0
    assert _QUIET / 3 + 0.2 + _QUIET <= elapsed < 5


def test_a_huge_drain_timeout_without_a_reaper_still_drains(fake: FakeModWsgi) -> None:
    # shutdown-timeout 0 (no reaper) and a finite drain_timeout too big to round to the ms.
    bridge = Bridge(drain_timeout=1e306)
    try:
        install(bridge, shutdown_timeout=0)
        assert bridge.run_soon(asyncio.sleep(0.05))
        fake.stop("maximum_requests")
        report = bridge.shutdown()
        assert report.clean and report.stats.completed == 1
    finally:
        bridge.shutdown(0)
    with pytest.raises(ValueError, match=r"shutdown_timeout must be a finite number"):
        install(Bridge(), shutdown_timeout=10**400)


def test_the_wait_for_requests_is_bounded_by_half_the_deadline(
    fake: FakeModWsgi, bridge: Bridge, caplog: pytest.LogCaptureFixture
) -> None:
    install(bridge, shutdown_timeout=15)
    bridge.start()
    fake.active_requests["stuck"] = object()  # a request that never ends
    started = time.monotonic()
    with caplog.at_level(logging.INFO, logger="asyncbridge"):
        fake.stop("shutdown_signal")  # deadline 1.5 s: at most 0.75 s of waiting
    assert time.monotonic() - started < APACHE_KILL_AFTER - EXIT_MARGIN + 0.5
    assert bridge.stats().loop_running is False
    assert "draining for at most 0.75s" in caplog.text


def test_drains_once_and_a_later_atexit_drain_gets_the_same_report(
    fake: FakeModWsgi, bridge: Bridge
) -> None:
    install(bridge)
    assert bridge.run_soon(asyncio.sleep(0))
    fake.stop("maximum_requests")
    first = bridge.shutdown()
    fake.stop("shutdown_signal")  # a second stop event changes nothing
    assert bridge.shutdown() is first
    assert first.stats.completed == 1


def test_a_process_that_never_used_the_bridge_has_nothing_to_drain(
    fake: FakeModWsgi, bridge: Bridge, caplog: pytest.LogCaptureFixture
) -> None:
    install(bridge)
    with caplog.at_level(logging.INFO, logger="asyncbridge"):
        fake.stop("maximum_requests")
    assert "mod_wsgi is stopping" not in caplog.text
    assert bridge.run(asyncio.sleep(0, "still usable"), timeout=5) == "still usable"


@pytest.mark.filterwarnings(FORK_WARNING)
def test_only_the_process_that_owns_the_loop_drains_it(fake: FakeModWsgi, bridge: Bridge) -> None:
    install(bridge)
    done: list[float] = []
    assert bridge.run_soon(sleep_then(0.5, done))
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            # A copy inherited through fork: the callback must leave it (and the parent) alone.
            fake.stop("shutdown_signal")
            code = 0 if bridge.stats().accepted == 0 else 2
        finally:
            os._exit(code)
    assert wait_child(pid, 30) == 0
    assert bridge.stats().loop_running is True
    fake.stop("maximum_requests")
    assert done == [0.5]


def test_warns_when_drain_timeout_does_not_fit_in_shutdown_timeout(
    fake: FakeModWsgi, caplog: pytest.LogCaptureFixture
) -> None:
    bridge = Bridge(drain_timeout=10)
    try:
        with caplog.at_level(logging.WARNING, logger="asyncbridge"):
            install(bridge)  # mod_wsgi's default shutdown-timeout: 5 s
        assert "drain_timeout=10s does not fit in mod_wsgi's shutdown-timeout=5s" in caplog.text
        assert "at most 3.5s" in caplog.text
        assert "at least 11.5s" in caplog.text
    finally:
        bridge.shutdown(5)


def test_no_warning_when_it_fits(fake: FakeModWsgi, caplog: pytest.LogCaptureFixture) -> None:
    bridge = Bridge(drain_timeout=10)
    try:
        with caplog.at_level(logging.WARNING, logger="asyncbridge"):
            install(bridge, shutdown_timeout=11.5)
        assert caplog.text == ""
    finally:
        bridge.shutdown(5)


@pytest.mark.parametrize(
    ("drain", "shutdown_timeout", "reason", "expected"),
    [
        (10, 15, "maximum_requests", 10),
        (10, DEFAULT_SHUTDOWN_TIMEOUT, "maximum_requests", 3.5),
        (10, 15, "shutdown_signal", 1.5),  # Apache's 3 s, whatever shutdown-timeout says
        (1, 15, "shutdown_signal", 1),
        (10, 2, "shutdown_signal", 0.5),
        (10, 1, "restart_interval", 0),  # never below 0
        (10, 0, "maximum_requests", 10),  # 0: mod_wsgi's reaper is off
        (10, 0, "shutdown_signal", 1.5),
    ],
)
def test_exit_deadline(drain: float, shutdown_timeout: float, reason: str, expected: float) -> None:
    assert exit_deadline(drain, shutdown_timeout, reason) == pytest.approx(expected)


def test_public_names() -> None:
    assert sorted(asyncbridge.mod_wsgi.__all__) == asyncbridge.mod_wsgi.__all__
    assert all(hasattr(asyncbridge.mod_wsgi, name) for name in asyncbridge.mod_wsgi.__all__)
