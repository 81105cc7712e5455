"""Serve a WSGI app that hands work to asyncbridge with Waitress: ``python serve.py``.

Waitress is one process: a main thread that accepts connections and a pool of request threads.
Nothing forks, so the bridge starts on the first ``run_soon()``. Ctrl-C (SIGINT) stops Waitress
cleanly: it lets the requests in progress finish, returns from ``serve()``, and Python's
``atexit`` then drains the bridge. SIGTERM (systemd, Docker, ``kill``) would end the process at
once, losing the work in flight: ``asyncbridge.waitress.install()`` makes it stop Waitress the
way Ctrl-C does.
"""

import logging
import os

import waitress
from app import application  # your WSGI application, app.py next to this file

import asyncbridge
import asyncbridge.waitress


def main() -> None:
    logging.basicConfig(level=logging.INFO)  # shows the shutdown report at exit
    asyncbridge.configure(drain_timeout=10)
    asyncbridge.waitress.install()  # from the main thread, before serving
    waitress.serve(
        application,
        host="127.0.0.1",
        port=int(os.environ.get("PORT", "8000")),
        threads=8,
    )


if __name__ == "__main__":
    main()
