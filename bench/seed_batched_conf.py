"""gunicorn config for the batched seed scenario: 2 sync workers, sized as seed_gunicorn_conf.py.

The asyncbridge modes get its hooks, ``max_concurrency=500`` and ``drain_timeout=20`` (see
``seed_gunicorn_conf.py`` for the arithmetic); batched flushes need far fewer slots (a tenth).
"""

import os

bind = os.environ["SEED_BIND"]
workers = 2
worker_class = "sync"
backlog = 2048
accesslog = None
graceful_timeout = 25
timeout = 45
control_socket_disable = True

if os.environ.get("SEED_MODE") in ("asyncbridge", "lean", "batched"):
    import asyncbridge

    asyncbridge.configure(max_concurrency=500, drain_timeout=20.0)

    from asyncbridge.gunicorn import (  # noqa: F401
        post_fork,
        post_worker_init,
        worker_abort,
        worker_exit,
        worker_int,
    )
