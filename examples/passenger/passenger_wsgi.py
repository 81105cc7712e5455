"""Passenger's startup file for a WSGI app that hands work to asyncbridge.

Passenger spawns each Python application process directly (smart spawning is for Ruby only),
and each one imports this file. Nothing is inherited through a fork, so the bridge starts on
the first ``run_soon()`` in each process, and its ``atexit`` fallback drains it: to stop a
process, Passenger closes its stdin, the loader's request loop ends, and Python exits normally.
Passenger SIGKILLs a process still running about 30 s after ``passenger stop`` began (60 s
after a restart or a ``max_requests`` recycle), so ``drain_timeout`` stays well below that.
"""

import logging

import asyncbridge

# Each process's shutdown report (accepted, completed, cancelled...) then reaches Passenger's log.
logging.basicConfig(level=logging.INFO)
asyncbridge.configure(drain_timeout=20)

from app import application  # noqa: E402  (your WSGI application, app.py next to this file)

__all__ = ["application"]
