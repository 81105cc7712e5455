"""A Celery app for the end-to-end tests: each task hands one notification to the bridge.

Run: ``celery -A tests.e2e.apps.worker_celery worker -P prefork -c 2 --max-tasks-per-child 5``
with the environment of :mod:`tests.e2e.apps.worker_common`. ``ABTEST_ADAPTER=0`` leaves out
``asyncbridge.celery.install()``: the control run.
"""

from __future__ import annotations

from celery import Celery  # type: ignore[import-untyped]

import asyncbridge.celery

from .worker_common import ADAPTER, REDIS_URL, hand_off

app = Celery("worker_celery", broker=REDIS_URL)
app.conf.update(
    broker_connection_retry_on_startup=True,
    task_ignore_result=True,
    worker_hijack_root_logger=True,
    worker_redirect_stdouts=False,
)

if ADAPTER:
    asyncbridge.celery.install()


@app.task(name="worker_celery.notify")  # type: ignore[untyped-decorator]
def notify(task_id: str) -> bool:
    """Hand a notification to the bridge and record it."""
    return hand_off(task_id)
