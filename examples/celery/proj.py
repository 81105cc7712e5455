"""A Celery app whose tasks notify a webhook in the background, through asyncbridge.

Run a worker from this folder, and send it a task:

    REDIS_URL=redis://127.0.0.1:6379/0 NOTIFY_URL=http://127.0.0.1:8001/notify \
        celery -A proj worker -P prefork -c 4 --max-tasks-per-child 1000
    python -c "from proj import order_placed; order_placed.delay('42')"

Stop the worker with SIGTERM (or Ctrl-C once): each pool process drains what its tasks handed
off, then exits; so does a child that max-tasks-per-child recycles.
"""

from __future__ import annotations

import os

from celery import Celery

import asyncbridge
import asyncbridge.celery
from asyncbridge.aiohttp import post_json

NOTIFY_URL = os.environ.get("NOTIFY_URL", "http://127.0.0.1:8001/notify")

app = Celery("proj", broker=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
app.conf.broker_connection_retry_on_startup = True
app.conf.task_ignore_result = True

# A loop per pool process, started after the fork and drained before the process exits.
asyncbridge.celery.install()


async def notify(order_id: str) -> None:
    """POST the event with the process's pooled aiohttp session; runs on the bridge loop."""
    await post_json(NOTIFY_URL, {"id": order_id, "event": "order-placed"})


@app.task
def order_placed(order_id: str) -> bool:
    """The task's own work goes here; the notification is handed off and the task returns."""
    return asyncbridge.run_soon(notify(order_id))
