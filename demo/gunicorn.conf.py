# gunicorn config for the demo app, in the style of gunicorn.conf.example.py.
# Run from the repository root: gunicorn -c demo/gunicorn.conf.py
import logging
import os

import asyncbridge

wsgi_app = "demo.app:app"
bind = os.environ.get("DEMO_APP_BIND", "127.0.0.1:8000")
workers = int(os.environ.get("DEMO_WORKERS", "2"))
worker_class = "sync"
proc_name = "asyncbridge-demo"
loglevel = "info"
timeout = 30
graceful_timeout = 10
# gunicorn >= 27 opens a control socket at one fixed path per user; several demos (or tests) at
# once would fight over it, and the demo does not use it. Older versions ignore the name.
control_socket_disable = True

# A worker's exit drain must end well before gunicorn kills it (graceful_timeout, and timeout
# once the worker stops heartbeating).
asyncbridge.configure(drain_timeout=5.0)

# gunicorn configures only its own loggers; without this, the drain report that asyncbridge logs
# at worker exit (INFO on the "asyncbridge" logger) would not be shown.
logging.basicConfig(
    level=logging.INFO,
    format="%(asctime)s [%(process)d] [%(levelname)s] %(name)s: %(message)s",
    datefmt="[%Y-%m-%d %H:%M:%S %z]",
)


def worker_exit(server, worker):  # type: ignore[no-untyped-def]
    # gunicorn also calls worker_exit in the master when a worker is already gone; only the
    # process that started the loop may drain it.
    if asyncbridge.default_bridge().owns_loop():
        asyncbridge.shutdown()
