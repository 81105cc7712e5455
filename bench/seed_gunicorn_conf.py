"""gunicorn config for the seed scenario: 2 sync workers; asyncbridge's hooks in its mode only.

Sized for this load the way an operator would (see gunicorn.conf.example.py):

- Each sync worker takes up to about 2,000 requests per second at saturation, each handing off one
  notification to a sink that answers in 100 ms. Little's law: 2,000/s x 0.1 s = 200 notifications
  in flight per worker. The defaults (``max_concurrency=100``, aiohttp pool ``limit=100``) cap a
  worker at 1,000 deliveries per second, so the backlog grows until ``max_pending`` refuses work
  and the exit drain runs out. Here: ``max_concurrency=500`` and a pool of 500 connections
  (``asyncbridge.aiohttp.configure(limit=500)`` in ``seed_app.py``), 2.5x the need.
- The exit drain: ``drain_timeout=20`` (a full backlog, 10,000 per worker, needs about 2 s at
  5,000/s, or 10 s if the sink, sharing the two cores, slows to 1,000/s per worker), then
  ``graceful_timeout >= drain_timeout + MARGIN (2 s) + the longest request`` and
  ``timeout >= 2 x (drain_timeout + MARGIN)``, so that the drain deadline,
  ``min(drain_timeout, graceful_timeout - 2, timeout / 2 - 2)``, is the full 20 s.

The naive mode gets the same pool size (``TCPConnector(limit=500)`` in ``seed_app.py``); it has no
concurrency bound or drain to size. The thread-per-call mode has no bound at all. The timeouts are
server settings and apply to every mode; only asyncbridge's drain uses them. The batched mode
(``bench/seed_batched.py``) gets the same: its flushes need far fewer slots (a tenth).
"""

import os

bind = os.environ["SEED_BIND"]
workers = 2
worker_class = "sync"
backlog = 2048
accesslog = None
graceful_timeout = 25  # >= drain_timeout (20) + MARGIN (2) + longest request
timeout = 45  # >= 2 x (drain_timeout + MARGIN): the drain deadline is min(20, 23, 20.5) = 20 s

if os.environ.get("SEED_MODE") in ("asyncbridge", "lean", "batched"):  # seed_app.BRIDGE_MODES
    import asyncbridge

    # Inherited by the workers (configured in the master before the fork, as in
    # gunicorn.conf.example.py); ASYNCBRIDGE_MAX_CONCURRENCY=500 in raw_env would do the same.
    asyncbridge.configure(max_concurrency=500, drain_timeout=20.0)

    from asyncbridge.gunicorn import *  # noqa: F403  (every hook, as gunicorn.conf.example.py)
