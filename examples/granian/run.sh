#!/bin/sh
# Serve a WSGI app that hands work to asyncbridge with Granian: ./run.sh [more granian options]
#
# Granian's workers are multiprocessing children: they end with os._exit, so Python's atexit
# never runs there. asyncbridge drains each worker's loop from multiprocessing's finalizers
# instead (SIGTERM, Ctrl-C, a SIGHUP reload, --workers-lifetime), with drain_timeout as the
# deadline. --workers-kill-timeout bounds how long Granian waits for a worker before SIGKILL:
# keep it a few seconds above drain_timeout (without it, Granian waits forever).
export ASYNCBRIDGE_DRAIN_TIMEOUT="${ASYNCBRIDGE_DRAIN_TIMEOUT:-20}"
exec granian --interface wsgi \
  --host 127.0.0.1 --port "${PORT:-8000}" \
  --workers 2 \
  --workers-kill-timeout 30 \
  "$@" \
  app:application
