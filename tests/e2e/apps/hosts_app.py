"""The notify app that the Passenger, mod_wsgi, Granian and Waitress tests serve.

``/notify`` hands one ``asyncbridge.aiohttp.post_json`` to the bridge with ``run_soon`` and
answers ``{"accepted": ..., "pid": ..., "id": ...}``, after ``?hold=SECONDS`` if given (so that
requests overlap and a host's processes share the load); with ``&late=1`` it holds first and
hands over after, as a request still running when a stop begins; ``/holding`` answers how many
requests are holding now; ``/stats`` answers this process's
``asyncbridge.stats()``. Each notification carries a unique id (``<pid>-<n>``).

Every process writes its shutdown report to ``OUT_DIR/report-<pid>.json`` when the core logs it,
whichever exit path drained (an adapter's hook, ``atexit``, multiprocessing's finalizers, a signal
handler), with the functions on the stack at that moment (``file.py:function``), so a test can
tell which path it was. A process that never drained writes nothing.

Settings come from the environment (``SINK_URL``, ``OUT_DIR``), or, where the host strips the
environment (Passenger), from ``hosts_app.json`` in the current directory. For a control run,
``HOSTS_APP_NO_MULTIPROCESSING_DRAIN=1`` cancels the core's drain in multiprocessing's
finalizers once the loop has started, as if the core had only its ``atexit`` fallback.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import os
import sys
import threading
import time
import traceback
import urllib.parse
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import asyncbridge
import asyncbridge.aiohttp

__all__ = ["application", "settings"]

_Start = Callable[[str, list[tuple[str, str]]], Any]


def settings() -> dict[str, str]:
    """``SINK_URL`` and ``OUT_DIR``, from the environment or ``./hosts_app.json``."""
    if "SINK_URL" in os.environ:
        return {name: os.environ[name] for name in ("SINK_URL", "OUT_DIR")}
    data: dict[str, str] = json.loads(Path("hosts_app.json").read_text())
    return data


_SETTINGS = settings()
_NO_MP_DRAIN = os.environ.get("HOSTS_APP_NO_MULTIPROCESSING_DRAIN") == "1"
_mp_drain_cancelled: int | None = None  # the PID where it was done
SINK_URL = _SETTINGS["SINK_URL"]
OUT_DIR = Path(_SETTINGS["OUT_DIR"])
_counter = itertools.count()
_count_lock = threading.Lock()
_holding = 0  # requests sleeping in their ?hold now


class _ReportFile(logging.Handler):
    """Writes the shutdown report the core logs (``logger.info("%s", report)``) to a file."""

    def emit(self, record: logging.LogRecord) -> None:
        args = record.args
        report = args[0] if isinstance(args, tuple) and args else None
        if not isinstance(report, asyncbridge.ShutdownReport):
            return
        data: dict[str, Any] = dataclasses.asdict(report.stats)
        data.update(
            deadline=report.timeout,
            elapsed=report.elapsed,
            abandoned=report.abandoned,
            thread=threading.current_thread().name,
            stack=[f"{Path(f.filename).name}:{f.name}" for f in traceback.extract_stack()],
        )
        path = OUT_DIR / f"report-{os.getpid()}.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data))
        tmp.replace(path)


def _setup_logging() -> None:
    logger = logging.getLogger("asyncbridge")
    if any(isinstance(h, _ReportFile) for h in logger.handlers):
        return
    logger.setLevel(logging.INFO)
    logger.addHandler(_ReportFile())
    if not logging.getLogger().handlers:  # the startup file may have configured logging
        stream = logging.StreamHandler(sys.stderr)
        fmt = "app[%(process)d] %(levelname)s %(name)s: %(message)s"
        stream.setFormatter(logging.Formatter(fmt))
        logger.addHandler(stream)


_setup_logging()


def _cancel_multiprocessing_drain() -> None:
    # Tried on each request until it finds the finalizer: another request thread may be the one
    # still starting the loop (and registering it).
    global _mp_drain_cancelled
    with _count_lock:
        if _mp_drain_cancelled == os.getpid():
            return
        util = sys.modules.get("multiprocessing.util")
        registry: dict[Any, Any] = getattr(util, "_finalizer_registry", {})
        for finalizer in list(registry.values()):
            callback = getattr(finalizer, "_callback", None)
            if getattr(callback, "__module__", "").startswith("asyncbridge"):
                finalizer.cancel()
                _mp_drain_cancelled = os.getpid()
                print(f"app[{os.getpid()}] control: cancelled {callback}", file=sys.stderr)


async def notify(event_id: str) -> None:
    await asyncbridge.aiohttp.post_json(SINK_URL, {"id": event_id})


def _hold(seconds: float) -> None:
    global _holding
    with _count_lock:
        _holding += 1
    try:
        time.sleep(seconds)
    finally:
        with _count_lock:
            _holding -= 1


def application(environ: dict[str, Any], start_response: _Start) -> Iterable[bytes]:
    path = environ.get("PATH_INFO", "")
    if path == "/notify":
        with _count_lock:  # some hosts run requests on several threads
            event_id = f"{os.getpid()}-{next(_counter)}"
        query = urllib.parse.parse_qs(environ.get("QUERY_STRING", ""))
        hold = float(query.get("hold", ["0"])[0])
        late = query.get("late") == ["1"]
        if not late:
            accepted = asyncbridge.run_soon(notify(event_id))
        if hold:
            _hold(hold)
        if late:
            accepted = asyncbridge.run_soon(notify(event_id))
        if _NO_MP_DRAIN:
            _cancel_multiprocessing_drain()
        body: dict[str, Any] = {"accepted": accepted, "pid": os.getpid(), "id": event_id}
    elif path == "/stats":
        body = dataclasses.asdict(asyncbridge.stats())
    elif path == "/holding":
        body = {"holding": _holding}
    else:
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"not found"]
    start_response("200 OK", [("Content-Type", "application/json")])
    return [json.dumps(body).encode()]
