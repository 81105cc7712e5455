"""The same WSGI app under uWSGI: one call in the app module does the wiring.

Run: uwsgi --http-socket 127.0.0.1:8000 --master --processes 2 --enable-threads \
     --master-fifo /tmp/uwsgi.fifo --pythonpath docs/examples --wsgi-file docs/examples/uwsgi_app.py
Stop gracefully, letting every worker drain: echo q > /tmp/uwsgi.fifo
"""

from __future__ import annotations

from wsgi_app import application

import asyncbridge.uwsgi

asyncbridge.uwsgi.install()  # post-fork start in each worker, drain in uwsgi.atexit

__all__ = ["application"]
