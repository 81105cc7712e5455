# gunicorn.conf.py: the one line asyncbridge needs. gunicorn reads ./gunicorn.conf.py from the
# directory it starts in (no -c needed) and installs each name this imports as the hook it names:
# post_fork, post_worker_init, worker_int, worker_abort and worker_exit give each worker its loop
# and drain it; in the master, pre_fork stops a loop started at import (preload_app) and
# child_exit counts what a killed worker lost (with a status directory: docs/guides/operators.md).
from asyncbridge.gunicorn import *  # noqa: F403
