"""The WSGI app shared by the uWSGI and wsgiref end-to-end tests.

``/notify`` hands one notification (a unique id) to the bridge with ``run_soon`` and answers at
once whether it was accepted; ``/stats`` answers this worker's ``asyncbridge.stats()``.
Notifications go to ``SINK_URL`` (tests/e2e/sink.py's Sink).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
from collections.abc import Callable, Iterable
from typing import Any

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
