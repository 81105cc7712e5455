"""A Dramatiq broker module whose actors notify a webhook in the background, through asyncbridge.

Run the workers from this folder, and send a message:

    REDIS_URL=redis://127.0.0.1:6379/0 NOTIFY_URL=http://127.0.0.1:8001/notify \
        dramatiq proj --processes 2 --threads 4
    python -c "from proj import order_placed; order_placed.send('42')"

Stop them with SIGTERM (or Ctrl-C): each worker process finishes its messages, drains what
they handed off, then exits.
"""

from __future__ import annotations

import os

import dramatiq
from dramatiq.brokers.redis import RedisBroker

import asyncbridge
from asyncbridge.aiohttp import post_json
from asyncbridge.dramatiq import AsyncBridge

NOTIFY_URL = os.environ.get("NOTIFY_URL", "http://127.0.0.1:8001/notify")

broker = RedisBroker(url=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
# A loop per worker process, shared by its threads, drained when the process stops.
broker.add_middleware(AsyncBridge())
dramatiq.set_broker(broker)


async def notify(order_id: str) -> None:
    """POST the event with the process's pooled aiohttp session; runs on the bridge loop."""
    await post_json(NOTIFY_URL, {"id": order_id, "event": "order-placed"})


@dramatiq.actor(max_retries=0)
def order_placed(order_id: str) -> None:
    """The actor's own work goes here; the notification is handed off and the actor returns."""
    asyncbridge.run_soon(notify(order_id))
