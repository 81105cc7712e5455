"""gunicorn config for the seed scenario: 2 sync workers; asyncbridge's hooks in its mode only."""

import os

bind = os.environ["SEED_BIND"]
workers = 2
worker_class = "sync"
backlog = 2048
accesslog = None
graceful_timeout = 30
timeout = 30

if os.environ.get("SEED_MODE") == "asyncbridge":
    from asyncbridge.gunicorn import (  # noqa: F401
        post_fork,
        post_worker_init,
        worker_abort,
        worker_exit,
        worker_int,
    )
