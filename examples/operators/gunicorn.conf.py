"""gunicorn.conf.py for a service whose operators want metrics, stall warnings and `status`.

Start gunicorn from this directory (``gunicorn app:app``): it reads ./gunicorn.conf.py itself.
"""

import os
import shutil

# One directory per service, for prometheus_client's multiprocess files and asyncbridge's status
# files alike. It must be set before prometheus_client is first imported (it picks its mode
# then) and before the workers fork, so it comes first.
STATUS_DIR = os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", "/tmp/myapp-metrics")
METRICS_PORT = int(os.environ.get("METRICS_PORT", "9100"))

import asyncbridge.prometheus  # noqa: E402
from asyncbridge.gunicorn import (  # noqa: E402, F401
    child_exit,
    post_fork,
    post_worker_init,
    worker_abort,
    worker_exit,
    worker_int,
)

bind = os.environ.get("BIND", "127.0.0.1:8000")
workers = 2

# In the master: child_exit then counts each worker that ends (what a killed one lost) and
# passes its pid to prometheus_client's mark_process_dead.
asyncbridge.prometheus.install()


def on_starting(server):  # once, when the master starts (not again on a HUP reload)
    shutil.rmtree(STATUS_DIR, ignore_errors=True)  # counters start from zero with the service
    os.makedirs(STATUS_DIR)


def when_ready(server):  # the whole service's metrics on a port of their own, from the master
    asyncbridge.prometheus.start_http_server(METRICS_PORT, addr="127.0.0.1")
