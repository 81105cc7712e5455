# gunicorn.conf.py: the one line asyncbridge needs. gunicorn reads ./gunicorn.conf.py from the
# directory it starts in (no -c needed) and installs each of these names as the hook it names.
from asyncbridge.gunicorn import post_fork, post_worker_init, worker_abort, worker_exit, worker_int  # noqa: F401
