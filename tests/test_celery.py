"""asyncbridge.celery.install() with Celery's real signals and pools, in this process.

Prefork workers with a real broker run end to end in tests/e2e/test_celery.py. Here the
receivers get the signals Celery sends: ``worker_process_init`` (as a pool child, or as the solo
pool sends it from its constructor), ``worker_process_shutdown`` and ``worker_shutdown``.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Iterator

import pytest
from celery import signals  # type: ignore[import-untyped]
from celery.concurrency.solo import TaskPool  # type: ignore[import-untyped]

import asyncbridge
import asyncbridge.celery
from asyncbridge.pytest_plugin import RecordingBridge
from tests.helpers import FORK_WARNING, wait_child

DONE: list[str] = []


async def _note(what: str, seconds: float = 0.2) -> None:
    await asyncio.sleep(seconds)
    DONE.append(what)


@pytest.fixture(autouse=True)
def installed() -> Iterator[None]:
    DONE.clear()
    asyncbridge.celery.install()
    yield
    asyncbridge.celery.install()  # back to the defaults for the next test
    DONE.clear()


def test_install_twice_connects_each_receiver_once() -> None:
    watched = (
        signals.worker_process_init,
        signals.worker_process_shutdown,
        signals.worker_shutdown,
    )
    before = [len(s.receivers) for s in watched]
    asyncbridge.celery.install()
    after = [len(s.receivers) for s in watched]
    assert before == after


def test_pool_process_starts_at_init_and_drains_at_shutdown(
    asyncbridge_bridge: RecordingBridge,
) -> None:
    signals.worker_process_init.send(sender="abtest@host")
    assert asyncbridge_bridge.owns_loop()
    assert asyncbridge.run_soon(_note("t1"))
    signals.worker_process_shutdown.send(sender="abtest@host", pid=os.getpid(), exitcode=0)
    assert DONE == ["t1"]  # drained before the signal returned (the child os._exit()s next)
    stats = asyncbridge_bridge.stats()
    assert (stats.accepted, stats.completed, stats.loop_running) == (1, 1, False)
    # Further exit signals were ignored during (and after) the drain.
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_IGN


def test_solo_pool_starts_the_loop_in_the_main_process(
    asyncbridge_bridge: RecordingBridge,
) -> None:
    TaskPool(initargs=(None, "abtest@host"))  # sends worker_process_init, as Celery's solo pool
    assert asyncbridge_bridge.owns_loop()
    assert asyncbridge.run_soon(_note("solo"))
    signals.worker_shutdown.send(sender=None)
    assert DONE == ["solo"]
    assert asyncbridge_bridge.stats().completed == 1


def test_worker_shutdown_drains_a_loop_started_on_first_use(
    asyncbridge_bridge: RecordingBridge,
) -> None:
    # The threads pool runs tasks in the main process and sends no worker_process_init.
    assert asyncbridge.run_soon(_note("thread"))
    signals.worker_shutdown.send(sender=None)
    assert DONE == ["thread"]
    assert not asyncbridge_bridge.stats().loop_running


def test_nothing_to_drain_when_the_loop_never_started(
    asyncbridge_bridge: RecordingBridge,
) -> None:
    signals.worker_process_shutdown.send(sender="abtest@host", pid=os.getpid(), exitcode=0)
    assert not asyncbridge_bridge.owns_loop()
    assert signal.getsignal(signal.SIGTERM) != signal.SIG_IGN  # nothing done at all


def test_timeout_sets_the_drain_deadline(asyncbridge_bridge: RecordingBridge) -> None:
    asyncbridge.celery.install(timeout=0)
    assert asyncbridge.run_soon(_note("slow", 30))
    signals.worker_process_shutdown.send(sender="abtest@host", pid=os.getpid(), exitcode=0)
    stats = asyncbridge_bridge.stats()
    assert (stats.accepted, stats.completed, stats.cancelled) == (1, 0, 1)


def test_install_with_its_own_bridge() -> None:
    bridge = asyncbridge.Bridge()
    asyncbridge.celery.install(bridge)
    try:
        signals.worker_process_init.send(sender="abtest@host")
        assert bridge.owns_loop()
        assert not asyncbridge.default_bridge().owns_loop()
        signals.worker_process_shutdown.send(sender="abtest@host", pid=os.getpid(), exitcode=0)
        assert not bridge.stats().loop_running
    finally:
        bridge.shutdown(5)


@pytest.mark.filterwarnings(FORK_WARNING)
def test_a_forked_child_leaves_the_parents_loop_alone(
    asyncbridge_bridge: RecordingBridge,
) -> None:
    # Work started in the main process belongs to it: a child's shutdown signal must not touch it.
    assert asyncbridge.run_soon(_note("parent", 0.5))
    pid = os.fork()
    if pid == 0:  # the child: what a recycling pool child does, without init (no loop here)
        code = 1
        try:
            signals.worker_process_shutdown.send(sender="h", pid=os.getpid(), exitcode=0)
            code = 0 if not asyncbridge.default_bridge().owns_loop() else 2
        finally:
            os._exit(code)
    assert wait_child(pid, 20) == 0
    assert asyncbridge_bridge.stats().loop_running
    assert asyncbridge_bridge.drain()
    assert DONE == ["parent"]


def test_negative_timeout_is_refused() -> None:
    with pytest.raises(ValueError, match="0 or more seconds"):
        asyncbridge.celery.install(timeout=-1)
