"""gunicorn settings for the Django Tasks example: ``gunicorn`` (run from this folder).

The asyncbridge hooks give each worker its own loop, which runs the tasks that worker enqueues,
and drain it when the worker exits: every task enqueued before SIGTERM still runs.
"""

from __future__ import annotations

import os

from asyncbridge.gunicorn import *  # noqa: F403  (every hook: gunicorn reads them)

wsgi_app = "shop.wsgi:application"
bind = os.environ.get("GUNICORN_BIND", "127.0.0.1:8000")
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
# The drain at worker exit must finish well inside both: asyncbridge.gunicorn keeps it below
# min(graceful_timeout, timeout / 2) with a margin, so the slowest task gets up to 10 s.
graceful_timeout = 30
timeout = 30
