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
import json
import logging
import os
import sys
from pathlib import Path

import uwsgi  # type: ignore[import-untyped]

import asyncbridge
import asyncbridge.uwsgi
from tests.e2e.apps.notify_wsgi import application

__all__ = ["application"]  # what uWSGI's --wsgi-file looks up

logging.basicConfig(
    level=logging.INFO,
    stream=sys.stderr,
    format="app[%(process)d] %(levelname)s %(name)s: %(message)s",
    force=True,
)

OUT_DIR = Path(os.environ["OUT_DIR"])


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
