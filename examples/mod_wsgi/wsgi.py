"""The WSGI script Apache mod_wsgi loads (``WSGIScriptAlias``), for an app that uses asyncbridge.

mod_wsgi starts Python inside each daemon process after Apache has forked it, so nothing is
inherited through a fork: the bridge starts on the first ``run_soon()``. ``install()`` drains it
when mod_wsgi stops the process (``maximum-requests``, a restart, Apache stopping), within the
time mod_wsgi and Apache grant. mod_wsgi does not tell Python its ``shutdown-timeout``: pass the
value of the ``WSGIDaemonProcess`` line (examples/mod_wsgi/apache.conf).
"""

import logging

import asyncbridge
import asyncbridge.mod_wsgi

# Each process's shutdown report then reaches Apache's error log (mod_wsgi sends stderr there).
logging.basicConfig(level=logging.INFO)
asyncbridge.configure(drain_timeout=10)
asyncbridge.mod_wsgi.install(shutdown_timeout=15)  # shutdown-timeout=15 in WSGIDaemonProcess

from app import application  # noqa: E402  (your WSGI application, on python-path)

__all__ = ["application"]
