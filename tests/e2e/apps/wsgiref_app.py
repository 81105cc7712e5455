"""The notify app under the standard library's wsgiref server: a plain process.

Run by tests/e2e/test_wsgiref.py as ``python tests/e2e/apps/wsgiref_app.py PORT`` with
``SINK_URL`` set. No server hooks here: the bridge starts on the first ``run_soon``, and
``install_signal_handlers()`` makes SIGTERM and SIGINT drain before the process exits.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import os
import sys
from collections.abc import Callable, Iterable
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

import asyncbridge
import asyncbridge.aiohttp

SINK_URL = os.environ["SINK_URL"]
_counter = itertools.count()
_Start = Callable[[str, list[tuple[str, str]]], Any]


async def notify(event_id: str) -> None:
    await asyncbridge.aiohttp.post_json(SINK_URL, {"id": event_id})


def application(environ: dict[str, Any], start_response: _Start) -> Iterable[bytes]:
    path = environ.get("PATH_INFO", "")
    if path == "/notify":
        event_id = f"{os.getpid()}-{next(_counter)}"
        body: dict[str, Any] = {"accepted": asyncbridge.run_soon(notify(event_id))}
    elif path == "/stats":
        body = dataclasses.asdict(asyncbridge.stats())
    else:
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"not found"]
    start_response("200 OK", [("Content-Type", "application/json")])
    return [json.dumps(body).encode()]


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
