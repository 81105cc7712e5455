"""asyncbridge.dramatiq.AsyncBridge with a real Dramatiq worker on a StubBroker, in this process.

The worker processes of the ``dramatiq`` command run end to end in tests/e2e/test_dramatiq.py.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Iterator

import dramatiq
import pytest
from dramatiq.brokers.stub import StubBroker

import asyncbridge
from asyncbridge.dramatiq import AsyncBridge
from asyncbridge.pytest_plugin import RecordingBridge

DONE: list[str] = []


async def _note(what: str, seconds: float = 0.2) -> None:
    await asyncio.sleep(seconds)
    DONE.append(what)


@pytest.fixture
def broker() -> Iterator[StubBroker]:
    DONE.clear()
    broker = StubBroker()
    broker.add_middleware(AsyncBridge())
    dramatiq.set_broker(broker)
    yield broker
    broker.close()
    DONE.clear()


def _actor(broker: StubBroker) -> dramatiq.Actor[[str], bool]:
    def hand_off(what: str) -> bool:
        return asyncbridge.run_soon(_note(what))

    return dramatiq.actor(broker=broker, actor_name=f"hand_off_{id(broker)}")(hand_off)


def _work(
    broker: StubBroker,
    actor: dramatiq.Actor[[str], bool],
    n: int,
    caplog: pytest.LogCaptureFixture | None = None,
) -> None:
    """Send ``n`` messages to a 2-thread worker, wait until they ran, stop the worker.

    With ``caplog``, the stop's asyncbridge log records (INFO and up) are captured.
    """
    worker = dramatiq.Worker(broker, worker_threads=2)
    worker.start()
    try:
        for i in range(n):
            actor.send(f"m{i}")
        broker.join(actor.queue_name, timeout=10_000)
        worker.join()
    finally:
        if caplog is None:
            worker.stop()
        else:
            with caplog.at_level(logging.INFO, logger="asyncbridge"):
                worker.stop()


def test_embedded_worker_stop_waits_for_the_bridge_and_leaves_it_running(
    broker: StubBroker, asyncbridge_bridge: RecordingBridge
) -> None:
    actor = _actor(broker)
    _work(broker, actor, 4)  # after_worker_shutdown: not a booted process, so drain() only
    assert sorted(DONE) == ["m0", "m1", "m2", "m3"]
    stats = asyncbridge_bridge.stats()
    assert (stats.accepted, stats.completed, stats.loop_running) == (4, 4, True)
    assert asyncbridge.run_soon(_note("after"))  # the process goes on, and so does the bridge
    assert asyncbridge_bridge.drain()


def test_booted_worker_process_shuts_the_bridge_down_after_the_worker(
    broker: StubBroker, asyncbridge_bridge: RecordingBridge, caplog: pytest.LogCaptureFixture
) -> None:
    actor = _actor(broker)
    broker.emit_after("process_boot")  # what the dramatiq command does in each worker process
    assert asyncbridge_bridge.owns_loop()
    _work(broker, actor, 3, caplog)
    assert sorted(DONE) == ["m0", "m1", "m2"]
    stats = asyncbridge_bridge.stats()
    assert (stats.accepted, stats.completed, stats.loop_running) == (3, 3, False)
    assert f"Dramatiq worker {os.getpid()} draining for at most 10s" in caplog.text
    assert "Dramatiq worker: asyncbridge shutdown" in caplog.text
    assert "accepted=3 completed=3" in caplog.text


def test_timeout_sets_the_drain_deadline(asyncbridge_bridge: RecordingBridge) -> None:
    broker = StubBroker()
    broker.add_middleware(AsyncBridge(timeout=0))
    try:
        broker.emit_after("process_boot")
        assert asyncbridge.run_soon(_note("late", 30))
        worker = dramatiq.Worker(broker, worker_threads=1)
        worker.start()
        worker.stop()
    finally:
        broker.close()
    stats = asyncbridge_bridge.stats()
    assert (stats.accepted, stats.completed, stats.cancelled) == (1, 0, 1)


def test_middleware_with_its_own_bridge() -> None:
    bridge = asyncbridge.Bridge()
    broker = StubBroker()
    broker.add_middleware(AsyncBridge(bridge))
    try:
        broker.emit_after("process_boot")
        assert bridge.owns_loop()
        assert not asyncbridge.default_bridge().owns_loop()
        assert bridge.run_soon(_note("own"))
        worker = dramatiq.Worker(broker, worker_threads=1)
        worker.start()
        worker.stop()
    finally:
        broker.close()
        bridge.shutdown(5)
    assert bridge.stats().completed == 1


def test_negative_timeout_is_refused() -> None:
    with pytest.raises(ValueError, match="0 or more seconds"):
        AsyncBridge(timeout=-1)
