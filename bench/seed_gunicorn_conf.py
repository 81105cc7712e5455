"""gunicorn config for the seed scenario: 2 sync workers; asyncbridge's hooks in its mode only."""

import os

bind = os.environ["SEED_BIND"]
workers = 2
worker_class = "sync"
backlog = 2048
accesslog = None
graceful_timeout = 30
timeout = 30

if os.environ.get("SEED_MODE") == "asyncbridge_backoff":
    # The proposed core change (bench/publish_delay.py), made the default bridge in the master;
    # no loop starts here, each worker inherits the object and starts its own loop.
    from publish_delay import YieldingBridge

    import asyncbridge

    asyncbridge.set_default_bridge(YieldingBridge())

if os.environ.get("SEED_MODE") in ("asyncbridge", "asyncbridge_backoff"):
    from asyncbridge.gunicorn import (  # noqa: F401
        post_fork,
        post_worker_init,
        worker_abort,
        worker_exit,
        worker_int,
    )
