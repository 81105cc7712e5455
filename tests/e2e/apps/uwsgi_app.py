"""The notify app under uWSGI: every request hands one notification to the bridge.

Loaded with ``--wsgi-file`` by tests/e2e/test_uwsgi.py. Environment:

- ``SINK_URL``: where notifications go (tests/e2e/sink.py's Sink).
- ``OUT_DIR``: each worker writes ``stats-<pid>.json`` there at exit, and ``postfork-<pid>``
  when a ``uwsgidecorators.postfork`` function ran in it.
- ``APP_DECORATORS``: ``before`` or ``after`` imports uwsgidecorators (and registers a postfork
  function) before or after ``install()``.
- ``APP_FORCE_NO_THREADS``: make ``uwsgi.has_threads`` read false, as on uWSGI < 2.0.27 without
  ``enable-threads`` (2.0.30 cannot turn threads off any more).
"""

from __future__ import annotations

import atexit
import dataclasses
import itertools
import json
import logging
import os
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import uwsgi  # type: ignore[import-untyped]

import asyncbridge
import asyncbridge.aiohttp
import asyncbridge.uwsgi

logging.basicConfig(
    level=logging.INFO,
    stream=sys.stderr,
    format="app[%(process)d] %(levelname)s %(name)s: %(message)s",
    force=True,
)

SINK_URL = os.environ["SINK_URL"]
OUT_DIR = Path(os.environ["OUT_DIR"])
_counter = itertools.count()


def _register_postfork() -> None:
    import uwsgidecorators  # type: ignore[import-untyped]

    @uwsgidecorators.postfork  # type: ignore[untyped-decorator]
    def mark() -> None:
        (OUT_DIR / f"postfork-{os.getpid()}").write_text("ran")


if os.environ.get("APP_FORCE_NO_THREADS"):
    uwsgi.has_threads = 0
if os.environ.get("APP_DECORATORS") == "before":
    _register_postfork()
asyncbridge.uwsgi.install()
if os.environ.get("APP_DECORATORS") == "after":
    _register_postfork()


async def notify(event_id: str) -> None:
    await asyncbridge.aiohttp.post_json(SINK_URL, {"id": event_id})


def _write_stats() -> None:
    bridge = asyncbridge.default_bridge()
    if not bridge.owns_loop():
        return  # the master, or a process that never started a loop
    # Idempotent: returns the report of the drain done in uwsgi.atexit (its deadline tells).
    report = bridge.shutdown()
    data = dataclasses.asdict(report.stats)
    data["deadline"] = report.timeout
    (OUT_DIR / f"stats-{os.getpid()}.json").write_text(json.dumps(data))


# Python's atexit runs after uwsgi.atexit (which drains), during interpreter finalization.
atexit.register(_write_stats)

_Start = Callable[[str, list[tuple[str, str]]], Any]


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
