"""RQ jobs for the end-to-end tests: each hands one notification to the bridge.

Run a worker: ``rq worker --burst --url $ABTEST_REDIS_URL --worker-class asyncbridge.rq.Worker
abtest``. ``python -m tests.e2e.apps.worker_rq N`` enqueues ``notify("t0")`` to ``notify("tN-1")``
on the queue ``abtest``. The environment is :mod:`tests.e2e.apps.worker_common`'s.
"""

from __future__ import annotations

import sys

from redis import Redis
from rq import Queue

from .worker_common import REDIS_URL, hand_off

QUEUE = "abtest"


def notify(task_id: str) -> bool:
    """The job: hand a notification to the bridge and record it."""
    return hand_off(task_id)


def enqueue(n: int) -> None:
    """Enqueue ``n`` jobs in one pipeline (by name: this module may run as ``__main__``)."""
    queue = Queue(QUEUE, connection=Redis.from_url(REDIS_URL))
    with queue.connection.pipeline() as pipe:
        for i in range(n):
            queue.enqueue(f"{__spec__.name}.notify", f"t{i}", pipeline=pipe)
        pipe.execute()


if __name__ == "__main__":
    enqueue(int(sys.argv[1]))
