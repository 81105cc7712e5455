"""The notify app under the standard library's wsgiref server: a plain process.

Run by tests/e2e/test_wsgiref.py as ``python tests/e2e/apps/wsgiref_app.py PORT`` with
``SINK_URL`` set. No server hooks here: the bridge starts on the first ``run_soon``, and
``install_signal_handlers()`` makes SIGTERM and SIGINT drain before the process exits.
"""

from __future__ import annotations

import logging
import sys
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
    asyncbridge.install_signal_handlers()
    with make_server("127.0.0.1", int(sys.argv[1]), application, handler_class=_QuietHandler) as s:
        print(f"serving on 127.0.0.1:{sys.argv[1]}", flush=True)
        try:
            s.serve_forever()
        except KeyboardInterrupt:  # SIGINT: drained by the handler, then Python's default raised
            print("stopped by SIGINT", flush=True)


if __name__ == "__main__":
    main()
