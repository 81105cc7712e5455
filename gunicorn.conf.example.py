# A complete gunicorn config for an app that uses asyncbridge. Copy it next to your app as
# gunicorn.conf.py and adjust the values marked "yours". gunicorn reads ./gunicorn.conf.py from
# the directory it is started in, so no -c is needed:
#
#   gunicorn myapp:app
#
# gunicorn executes this file in the master, before it loads the app and again on every HUP.
# Nothing here starts a loop: each worker starts its own in post_fork (post_worker_init for
# gevent workers) and drains it in worker_exit.
import os

import asyncbridge
import asyncbridge.gunicorn

# The one line asyncbridge needs (the rest of this file is sizing and an example hook): gunicorn
# takes every module-level name that is a setting, so importing the hooks installs them.
from asyncbridge.gunicorn import *  # noqa: F403

# -- serving (yours) ---------------------------------------------------------------------------
bind = os.environ.get("BIND", "127.0.0.1:8000")
workers = 2
worker_class = "sync"  # "gthread" with threads = 8 works too, and so does "gevent"
threads = 1
preload_app = False  # True works too: the master's inherited loop is discarded in each worker
# With preload_app = True, an app that hands work off at import starts a loop in the master;
# pre_fork (imported above) drains and stops it before the first fork (forking a threaded
# process is unsafe).

# Recycling a worker drains it like any graceful exit: nothing accepted is lost.
max_requests = 1000
max_requests_jitter = 100

# -- how long a worker may take to exit, and the drain that must fit inside it ------------------
#
# graceful_timeout: after SIGTERM (stop, HUP reload) the master waits this long, then SIGKILLs.
# timeout: a worker that has not heartbeated for this long is aborted (SIGABRT, then SIGKILL).
#   Once its request loop has ended a worker no longer heartbeats, and its last heartbeat may
#   already be timeout / 2 old, so the drain must end well before timeout / 2.
#
# worker_exit drains for
#     min(drain_timeout, graceful_timeout - MARGIN, timeout / 2 - MARGIN)
# seconds, where MARGIN (2 s) covers the cancellation step after the deadline and the exit
# itself. With the values below: min(10, 30 - 2, 30 / 2 - 2) = 10 s. Work still running after
# the deadline is cancelled, counted and named in the report.
#
# Size drain_timeout to the slowest call you hand to run_soon (a push service's p99, plus a
# retry if you do one), then make graceful_timeout >= drain_timeout + MARGIN + your longest
# request (the clock starts at SIGTERM, before in-flight requests finish) and
# timeout >= 2 * (drain_timeout + MARGIN), or the drain is cut shorter than you asked.
graceful_timeout = 30
timeout = 30
asyncbridge.configure(drain_timeout=10.0)  # or ASYNCBRIDGE_DRAIN_TIMEOUT=10 in the environment

# -- the hooks -----------------------------------------------------------------------------------
#
# post_fork, post_worker_init, worker_abort, worker_exit and worker_int (each worker's loop and
# its drain), pre_fork and child_exit (in the master) are asyncbridge's, imported above under the
# names gunicorn looks for. child_exit counts what a killed worker lost once the workers publish
# their counts: set ASYNCBRIDGE_STATUS_DIR (or PROMETHEUS_MULTIPROC_DIR) in the master's
# environment, see docs/guides/operators.md. gunicorn has one slot per hook: to run a hook of
# your own too, chain it with asyncbridge.gunicorn.chain. Every chained hook runs even when one
# raises.


def log_worker_stats(server, worker):  # yours: an example of a hook of your own
    if worker.pid == os.getpid():  # gunicorn also calls worker_exit in the master
        stats = asyncbridge.stats()
        worker.log.info("worker %s handed %d coroutines to asyncbridge", worker.pid, stats.accepted)


worker_exit = asyncbridge.gunicorn.chain(asyncbridge.gunicorn.worker_exit, log_worker_stats)

# asyncbridge logs task failures and the shutdown report on the "asyncbridge" logger; the hooks
# also write the report to gunicorn's error log (INFO, or WARNING when something was cancelled).
loglevel = "info"
