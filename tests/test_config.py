"""Options: defaults, validation with messages that name the option, environment variables."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from asyncbridge import Bridge, Options
from asyncbridge._config import options_from_env


def test_defaults() -> None:
    o = Options()
    assert (o.max_pending, o.max_concurrency, o.on_full) == (10_000, 100, "drop")
    assert (o.drain_timeout, o.task_timeout, o.block_timeout) == (10.0, None, 1.0)
    assert o.loop_factory is None and o.on_error is None and o.on_drop is None


@pytest.mark.parametrize(
    ("name", "value", "error", "match"),
    [
        ("max_pending", 0, ValueError, "max_pending must be at least 1"),
        ("max_pending", "10", TypeError, "max_pending must be an int, got str"),
        ("max_pending", True, TypeError, "max_pending must be an int"),
        ("max_concurrency", -1, ValueError, "max_concurrency"),
        ("on_full", "wait", ValueError, "on_full must be one of 'drop', 'raise', 'block'"),
        ("drain_timeout", -1, ValueError, "drain_timeout"),
        ("drain_timeout", float("nan"), ValueError, "drain_timeout"),
        pytest.param(
            "drain_timeout", 10**400, ValueError, "drain_timeout must be a finite", id="huge-int"
        ),
        pytest.param(
            "task_timeout", 10**400, ValueError, "task_timeout must be a finite", id="huge-int2"
        ),
        ("task_timeout", 0, ValueError, "task_timeout must be a finite number of seconds greater"),
        ("block_timeout", "1s", TypeError, "block_timeout must be a number of seconds"),
        ("loop_factory", "uvloop", TypeError, "loop_factory must be callable"),
        ("on_error", 3, TypeError, "on_error must be callable"),
        (
            "max_pendng",
            1,
            TypeError,
            "unknown asyncbridge option 'max_pendng'; known options: max_pending",
        ),
    ],
)
def test_bad_values_name_the_option(
    name: str, value: object, error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        Bridge(**{name: value})


def test_an_int_too_big_for_a_float_is_refused_by_name_everywhere() -> None:
    # Not OverflowError from float(): the same ValueError as any other infinite value.
    import asyncbridge

    async def flush(items: list[int]) -> None:
        await asyncio.sleep(0)

    with pytest.raises(ValueError, match="budget must be a finite number"):
        asyncbridge.retrying(flush, [], budget=10**400).close()  # never reached
    bridge = Bridge()
    with pytest.raises(ValueError, match="max_delay must be a finite number"):
        bridge.batcher(flush, max_delay=10**400)
    with pytest.raises(ValueError, match="task_timeout must be a finite number"):
        bridge.lane("huge", task_timeout=10**400)
    with pytest.raises(ValueError, match=r"\(401 characters\)"):  # the message stays short
        bridge.batcher(flush, max_delay=10**400)


def test_environment_sets_every_kind_of_option(monkeypatch: pytest.MonkeyPatch) -> None:
    env = {
        "ASYNCBRIDGE_MAX_PENDING": "50",
        "ASYNCBRIDGE_MAX_CONCURRENCY": "none",
        "ASYNCBRIDGE_ON_FULL": "Block",
        "ASYNCBRIDGE_BLOCK_TIMEOUT": "0.5",
        "ASYNCBRIDGE_DRAIN_TIMEOUT": "3",
        "ASYNCBRIDGE_TASK_TIMEOUT": "2.5",
        "ASYNCBRIDGE_LOOP_FACTORY": "asyncio:new_event_loop",
        "ASYNCBRIDGE_ON_ERROR": "logging.exception",
        "ASYNCBRIDGE_ON_DROP": "none",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    o = Bridge().options
    assert (o.max_pending, o.max_concurrency, o.on_full) == (50, None, "block")
    assert (o.block_timeout, o.drain_timeout, o.task_timeout) == (0.5, 3.0, 2.5)
    assert o.loop_factory is asyncio.new_event_loop
    assert o.on_error is logging.exception
    assert o.on_drop is None


def test_explicit_options_win_over_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ASYNCBRIDGE_MAX_PENDING", "50")
    assert Bridge(max_pending=7).options.max_pending == 7


@pytest.mark.parametrize(
    ("key", "raw", "match"),
    [
        ("ASYNCBRIDGE_MAX_PENDING", "lots", "ASYNCBRIDGE_MAX_PENDING must be a whole number"),
        ("ASYNCBRIDGE_DRAIN_TIMEOUT", "-2", "ASYNCBRIDGE_DRAIN_TIMEOUT='-2'"),
        ("ASYNCBRIDGE_ON_FULL", "sometimes", "on_full must be one of"),
        ("ASYNCBRIDGE_LOOP_FACTORY", "no_such_module_xyz.f", "cannot be imported"),
        ("ASYNCBRIDGE_LOOP_FACTORY", "nodots", "must be a dotted path"),
    ],
)
def test_bad_environment_values_name_the_variable(key: str, raw: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        options_from_env({key: raw})


def test_unknown_environment_variables_are_warned_about_and_ignored(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, "asyncbridge"):
        assert options_from_env({"ASYNCBRIDGE_DRAIN_TIMOUT": "3", "OTHER": "x"}) == {}
    assert "ASYNCBRIDGE_DRAIN_TIMOUT" in caplog.text  # the known names are listed
    assert "ignoring unknown environment variable ASYNCBRIDGE_DRAIN_TIMOUT" in caplog.text


def test_loop_factory_makes_the_loop() -> None:
    made: list[asyncio.AbstractEventLoop] = []

    def factory() -> asyncio.AbstractEventLoop:
        loop = asyncio.new_event_loop()
        made.append(loop)
        return loop

    bridge = Bridge(loop_factory=factory)
    try:
        assert bridge.get_loop() is made[0]
    finally:
        bridge.shutdown(2)


def test_the_environment_is_read_again_when_the_loop_starts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    bridge = Bridge(drain_timeout=3)
    monkeypatch.setenv("ASYNCBRIDGE_MAX_PENDING", "7")  # e.g. gunicorn's raw_env, after import
    monkeypatch.setenv("ASYNCBRIDGE_DRAIN_TIMEOUT", "9")
    assert bridge.options.max_pending == 10_000
    bridge.configure(task_timeout=4)
    try:
        bridge.start()
        o = bridge.options
        assert (o.max_pending, o.drain_timeout, o.task_timeout) == (7, 3.0, 4.0)
    finally:
        bridge.shutdown(1)


def test_concurrent_configure_calls_lose_no_change(monkeypatch: pytest.MonkeyPatch) -> None:
    # Four threads each set a different option at the same moment. Computing the new options is
    # slowed down so that, without a lock, every thread would read the same old options and the
    # last writer would undo the other three.
    import threading
    import time

    from asyncbridge import Bridge, Options

    bridge = Bridge()
    original = Options.updated

    def slow(self: Options, changes: Any) -> Options:
        new = original(self, changes)
        time.sleep(0.02)
        return new

    monkeypatch.setattr(Options, "updated", slow)
    changes: list[dict[str, Any]] = [
        {"max_pending": 1234},
        {"block_timeout": 2.0},
        {"drain_timeout": 3.0},
        {"task_timeout": 4.0},
    ]
    barrier = threading.Barrier(len(changes))

    def work(change: dict[str, Any]) -> None:
        barrier.wait(5)
        bridge.configure(**change)

    threads = [threading.Thread(target=work, args=(c,)) for c in changes]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    o = bridge.options
    got = (o.max_pending, o.block_timeout, o.drain_timeout, o.task_timeout)
    assert got == (1234, 2.0, 3.0, 4.0)
