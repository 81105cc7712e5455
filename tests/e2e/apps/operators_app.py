"""A WSGI app for the operators' end-to-end tests (tests/e2e/test_operators.py).

``GET /`` hands one notification to the bridge (``?to=fail`` or ``?to=slow`` sends it to the
failing or hanging sink instead); ``GET /block?seconds=S`` hands over a coroutine that calls
``time.sleep(S)`` on the loop; ``GET /metrics`` answers ``asyncbridge.prometheus.render()``;
``GET /stats`` this worker's ``stats()``. Notification ids are ``<pid>-<n>``, so the sink can
tell which worker sent what.

Environment: ``SINK_URL``, ``FAIL_SINK_URL``, ``SLOW_SINK_URL``.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import time
import urllib.parse
from collections.abc import Callable, Iterable
from typing import Any

import asyncbridge
import asyncbridge.prometheus
from asyncbridge.aiohttp import post_json

SINKS = {
    "ok": os.environ.get("SINK_URL", ""),
    "fail": os.environ.get("FAIL_SINK_URL", ""),
    "slow": os.environ.get("SLOW_SINK_URL", ""),
}
_ids = itertools.count()

StartResponse = Callable[[str, list[tuple[str, str]]], object]


async def blocking_job(seconds: float) -> None:
    time.sleep(seconds)  # noqa: ASYNC251  # blocks the loop


def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    """The WSGI entry point."""
    path = environ.get("PATH_INFO", "/")
    query = urllib.parse.parse_qs(environ.get("QUERY_STRING", ""))
    content_type = "text/plain"
    if path == "/metrics":
        body, content_type = asyncbridge.prometheus.render()
    elif path == "/stats":
        body = json.dumps(dataclasses.asdict(asyncbridge.stats())).encode()
    elif path == "/block":
        asyncbridge.run_soon(blocking_job(float(query.get("seconds", ["1"])[0])))
        body = b"blocking"
    else:
        nid = f"{os.getpid()}-{next(_ids)}"
        asyncbridge.run_soon(post_json(SINKS[query.get("to", ["ok"])[0]], {"id": nid}))
        body = nid.encode()
    start_response("200 OK", [("Content-Type", content_type), ("Content-Length", str(len(body)))])
    return [body]
