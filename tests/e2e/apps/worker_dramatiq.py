"""A Dramatiq broker module for the end-to-end tests: each message hands one notification off.

Run: ``dramatiq tests.e2e.apps.worker_dramatiq -p 2 -t 2`` with the environment of
:mod:`tests.e2e.apps.worker_common`. ``ABTEST_ADAPTER=0`` leaves the middleware out: the control
run.
"""

from __future__ import annotations

import dramatiq
from dramatiq.brokers.redis import RedisBroker

from asyncbridge.dramatiq import AsyncBridge

from .worker_common import ADAPTER, REDIS_URL, hand_off

broker = RedisBroker(url=REDIS_URL)  # type: ignore[no-untyped-call]
if ADAPTER:
    broker.add_middleware(AsyncBridge())
dramatiq.set_broker(broker)


@dramatiq.actor(queue_name="abtest", max_retries=0)
def notify(task_id: str) -> None:
    """Hand a notification to the bridge and record it."""
    hand_off(task_id)
