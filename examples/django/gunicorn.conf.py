"""gunicorn settings for the Django example: ``gunicorn -c gunicorn.conf.py``.

The asyncbridge hooks give each worker its own loop and drain it when the worker exits.
"""

from __future__ import annotations

import os

from asyncbridge.gunicorn import *  # noqa: F403  (every hook: gunicorn reads them)

wsgi_app = "djangoexample.wsgi:application"
bind = os.environ.get("GUNICORN_BIND", "127.0.0.1:8000")
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
# The drain at worker exit must finish well inside both of these; asyncbridge.gunicorn keeps
# it below min(graceful_timeout, timeout / 2) with a margin.
graceful_timeout = 30
timeout = 30
