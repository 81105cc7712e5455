"""A WSGI app for the end-to-end tests: each request hands one notification to the bridge.

``GET /`` (or any path but ``/stats``) calls ``run_soon(post_json(sink, {"id": ...}))`` with an
id unique across workers, and answers at once with that id. ``?slow`` sends to the slow sink
instead; ``?block`` then blocks the request for 30 s (a stuck request, for gunicorn's worker
timeout). ``GET /stats`` answers this worker's :func:`asyncbridge.stats` as JSON, and
``GET /where`` whether the bridge loop runs in the request's own OS thread (the gevent hub) or in
another one; neither counts as accepted work.

Environment:
    NOTIFY_SINK_URL: Where notifications go.
    NOTIFY_SLOW_SINK_URL: Where ``?slow`` notifications go (defaults to NOTIFY_SINK_URL).
    NOTIFY_TRAP: When set, the module does at import what the preload trap is made of: it starts
        its own asyncio loop in a thread and uses the bridge, in whatever process imports it
        (the gunicorn master under ``preload_app``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import itertools
import json
import os
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import asyncbridge
from asyncbridge.aiohttp import post_json

SINK_URL = os.environ.get("NOTIFY_SINK_URL", "")
SLOW_SINK_URL = os.environ.get("NOTIFY_SLOW_SINK_URL", SINK_URL)

_ids = itertools.count()

StartResponse = Callable[[str, list[tuple[str, str]]], object]


def _own_loop_at_import() -> None:
    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, name="app-own-loop", daemon=True).start()
    asyncio.run_coroutine_threadsafe(asyncio.sleep(0), loop).result(5)
    asyncbridge.run(asyncio.sleep(0), timeout=5)  # starts the bridge in this (master) process


if os.environ.get("NOTIFY_TRAP"):
    _own_loop_at_import()


def stats_json() -> bytes:
    """This worker's stats as JSON."""
    return json.dumps(dataclasses.asdict(asyncbridge.stats())).encode()


def loop_in_request_thread() -> bool:
    """Whether the bridge loop runs in the calling OS thread (gevent's hub) or in another one."""
    done: concurrent.futures.Future[int] = concurrent.futures.Future()
    asyncbridge.get_loop().call_soon_threadsafe(lambda: done.set_result(threading.get_native_id()))
    return done.result(5) == threading.get_native_id()


def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    """The WSGI entry point."""
    if environ.get("PATH_INFO") == "/stats":
        body = stats_json()
    elif environ.get("PATH_INFO") == "/where":
        body = json.dumps({"loop_in_request_thread": loop_in_request_thread()}).encode()
    else:
        nid = f"{os.getpid()}-{next(_ids)}"
        url = SLOW_SINK_URL if "slow" in environ.get("QUERY_STRING", "") else SINK_URL
        asyncbridge.run_soon(post_json(url, {"id": nid}))
        body = nid.encode()
        if "block" in environ.get("QUERY_STRING", ""):
            time.sleep(30)
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
