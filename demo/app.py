"""The demo's Flask app: a tiny site whose page views are tracked and pushed to the hub.

``/track?path=/pricing`` (GET or POST) records a hit for a path and answers 202 at once: the
push to the hub happens on asyncbridge's background loop, over the shared pooled aiohttp
session, signed with the shared secret. Every other page of the site tracks itself.

Served by gunicorn with ``demo/gunicorn.conf.py``; the hub's address comes from ``$DEMO_HUB_URL``.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import threading
import time
from typing import Any

from flask import Flask, Response, jsonify, request

import asyncbridge
import asyncbridge.aiohttp

from .signing import SIGNATURE_HEADER, load_secret, sign

__all__ = ["app", "push_hit", "track"]

HUB_URL = os.environ.get("DEMO_HUB_URL", "http://127.0.0.1:8001").rstrip("/")
PAGES = ("/", "/pricing", "/docs", "/blog", "/signup")

logger = logging.getLogger("demo.app")
app = Flask(__name__)

# Read once at import (in each worker); never logged.
_SECRET = load_secret()
_ids = itertools.count(1)
_ids_lock = threading.Lock()


async def push_hit(hit: dict[str, Any]) -> None:
    """Send one hit to the hub, signed. Runs on the bridge loop; failures are logged there.

    ``post_json`` sends ``json.dumps(payload)`` (the session's default serializer), so the
    signature is computed over exactly those bytes.
    """
    body = json.dumps(hit).encode()
    await asyncbridge.aiohttp.post_json(
        f"{HUB_URL}/events", hit, headers={SIGNATURE_HEADER: sign(_SECRET, body)}
    )


def track(path: str) -> bool:
    """Record a hit for ``path`` and hand its push to the background loop.

    Returns:
        Whether asyncbridge accepted the push (False only when its backlog is full or it is
        shutting down; the drop is counted in ``asyncbridge.stats()``).
    """
    with _ids_lock:
        n = next(_ids)
    pid = os.getpid()
    hit = {"id": f"{pid}-{n}", "path": path[:200] or "/", "pid": pid, "at": time.time()}
    return asyncbridge.run_soon(push_hit(hit))


@app.route("/track", methods=["GET", "POST"])
def track_view() -> tuple[Response, int]:
    """Track ``?path=`` (or a JSON body's ``path``); answers 202 without waiting for the hub."""
    body = request.get_json(silent=True) if request.method == "POST" else None
    path = request.args.get("path") or (body or {}).get("path") or "/"
    queued = track(str(path))
    return jsonify(queued=queued), 202


@app.get("/stats")
def stats_view() -> Response:
    """This worker's asyncbridge accounting, for the curious."""
    s = asyncbridge.stats()
    return jsonify(
        pid=s.pid,
        accepted=s.accepted,
        completed=s.completed,
        failed=s.failed,
        pending=s.pending,
        running=s.running,
        dropped=dict(s.dropped),
    )


def _page(path: str) -> str:
    track(path)
    links = " · ".join(f'<a href="{p}">{p}</a>' for p in PAGES)
    return (
        "<!doctype html><meta charset=utf-8><title>asyncbridge demo site</title>"
        f"<h1>Page {path}</h1><p>This view was tracked; watch the dashboard.</p><p>{links}</p>"
    )


def _add_pages() -> None:
    for path in PAGES:
        endpoint = "page_" + (path.strip("/") or "home")
        app.add_url_rule(path, endpoint, lambda path=path: _page(path))


_add_pages()
