# gunicorn config for the demo app, in the style of gunicorn.conf.example.py.
# Run from the repository root: gunicorn -c demo/gunicorn.conf.py
import logging
import os
import signal
import threading
import time
from typing import Any

# Each worker gets its own loop; worker_exit drains it under a deadline below gunicorn's
# timeouts and logs the drain report; worker_int and worker_abort shorten that deadline on the
# quick exit paths. With ASYNCBRIDGE_STATUS_DIR set (demo.run sets it), each loop publishes its
# counts there, and child_exit, in the master, counts every worker that exited, a killed one too.
from asyncbridge.gunicorn import (
    child_exit,
    post_fork,
    post_worker_init,
    worker_abort,
    worker_exit,
    worker_int,
)

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

# gunicorn configures only its own loggers. This shows asyncbridge's warnings (a push that
# failed, work dropped) in the same format; the drain report goes to gunicorn's log.
logging.basicConfig(
    level=logging.WARNING,
    format="%(asctime)s [%(process)d] [%(levelname)s] %(name)s: %(message)s",
    datefmt="[%Y-%m-%d %H:%M:%S %z]",
)


def when_ready(server: Any) -> None:
    # demo.run starts gunicorn in a session of its own, out of reach of a terminal's Ctrl-C, and
    # stops it with SIGTERM. Should demo.run die without doing so, stop gracefully all the same.
    parent = int(os.environ.get("DEMO_PARENT_PID") or 0)
    if parent:
        threading.Thread(target=_stop_without, args=(server, parent), daemon=True).start()


def _stop_without(server: Any, parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(1.0)
    server.log.warning("demo.run (pid %d) went away; stopping gracefully", parent)
    os.kill(os.getpid(), signal.SIGTERM)


__all__ = [
    "child_exit",
    "post_fork",
    "post_worker_init",
    "when_ready",
    "worker_abort",
    "worker_exit",
    "worker_int",
]
