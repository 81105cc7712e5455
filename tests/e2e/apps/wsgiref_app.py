"""The notify app under the standard library's wsgiref server: a plain process.

Run by tests/e2e/test_wsgiref.py as ``python tests/e2e/apps/wsgiref_app.py PORT`` with
``SINK_URL`` set. No server hooks here: the bridge starts on the first ``run_soon``, and
``install_signal_handlers()`` makes SIGTERM and SIGINT drain before the process exits.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

import asyncbridge
from tests.e2e.apps.notify_wsgi import application


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


def main() -> None:
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s"
    )
    with make_server("127.0.0.1", int(sys.argv[1]), application, handler_class=_QuietHandler) as s:

        def stop(signum: int, frame: object) -> None:
            # A KeyboardInterrupt raised while wsgiref writes a response is swallowed by its
            # error handler and the server keeps serving; stopping serve_forever from another
            # thread ends it wherever the main thread is.
            threading.Thread(target=s.shutdown).start()

        signal.signal(signal.SIGINT, stop)
        # Installed after our handler: SIGINT drains the bridge first, then calls stop().
        asyncbridge.install_signal_handlers()
        print(f"serving on 127.0.0.1:{sys.argv[1]}", flush=True)
        s.serve_forever()
        print("stopped by SIGINT", flush=True)


if __name__ == "__main__":
    main()
