"""RQ jobs that notify a webhook in the background, through asyncbridge.

Run a worker from this folder with asyncbridge's worker class, and enqueue a job:

    NOTIFY_URL=http://127.0.0.1:8001/notify \
        rq worker --url redis://127.0.0.1:6379/0 --worker-class asyncbridge.rq.Worker
    python -c "import jobs; jobs.enqueue('42')"

Each job runs in a work horse that RQ forks for it; the horse drains what the job handed off
before it exits. ``--worker-class asyncbridge.rq.SimpleWorker`` runs the jobs in the worker
itself and drains once, when the worker stops.
"""

from __future__ import annotations

import os

from redis import Redis
from rq import Queue

import asyncbridge
from asyncbridge.aiohttp import post_json

NOTIFY_URL = os.environ.get("NOTIFY_URL", "http://127.0.0.1:8001/notify")
REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")


async def notify(order_id: str) -> None:
    """POST the event with the process's pooled aiohttp session; runs on the bridge loop."""
    await post_json(NOTIFY_URL, {"id": order_id, "event": "order-placed"})


def order_placed(order_id: str) -> bool:
    """The job's own work goes here; the notification is handed off and the job returns."""
    return asyncbridge.run_soon(notify(order_id))


def enqueue(order_id: str) -> None:
    """Put an ``order_placed`` job on the default queue."""
    Queue(connection=Redis.from_url(REDIS_URL)).enqueue(order_placed, order_id)
