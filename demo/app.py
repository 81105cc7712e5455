"""The demo's Flask app: a tiny site whose page views are tracked and pushed to the hub.

``/track?path=/pricing`` (GET or POST) records a hit for a path and pushes it to the hub, signed
with the shared secret, in the current mode (see :mod:`demo.mode`): handed to asyncbridge's
background loop (answers 202 at once), or inline, with a blocking client (answers 202 once the
hub has, 502 if the push failed). Every other page of the site tracks itself.

Served by gunicorn with ``demo/gunicorn.conf.py``; the hub's address comes from ``$DEMO_HUB_URL``,
the mode from the file ``$DEMO_MODE_FILE`` (written by the hub), else ``$DEMO_MODE``.
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
import time
from typing import Any

from flask import Flask, Response, jsonify, request

import asyncbridge

from .metrics import MODE_KEY, RequestTimer
from .mode import DEFAULT, ModeFile
from .push import HUB_URL, hand_off, push_inline
from .signing import load_secret

__all__ = ["app", "track"]

PAGES = ("/", "/pricing", "/docs", "/blog", "/signup")

logger = logging.getLogger("demo.app")
app = Flask(__name__)
app.wsgi_app = RequestTimer(app.wsgi_app, HUB_URL, load_secret())  # type: ignore[method-assign]

_mode = ModeFile(os.environ.get("DEMO_MODE_FILE"), os.environ.get("DEMO_MODE") or DEFAULT)
_ids = itertools.count(1)
_ids_lock = threading.Lock()


def _new_hit(path: str, mode: str) -> dict[str, Any]:
    with _ids_lock:
        n = next(_ids)
    pid = os.getpid()
    # "at" is the hand-off time: the hub plots its arrival delay from it.
    hit_id = f"{pid}-{n}"
    return {"id": hit_id, "path": path[:200] or "/", "pid": pid, "mode": mode, "at": time.time()}


def track(path: str) -> tuple[bool, str]:
    """Record a hit for ``path`` and push it to the hub in the current mode.

    Returns:
        ``(ok, error)``. With asyncbridge, ``ok`` says whether it accepted the push (False only
        when its backlog is full or it is shutting down; the drop is counted in
        ``asyncbridge.stats()``). Inline, whether the hub took it; ``error`` says why not.
    """
    mode = _mode.read()
    request.environ[MODE_KEY] = mode
    hit = _new_hit(path, mode)
    if mode == "asyncbridge":
        return hand_off(hit), ""
    try:
        push_inline(hit)
    except OSError as exc:
        logger.warning("inline push of hit %s failed: %s", hit["id"], exc)
        return False, f"push to the hub failed: {exc}"
    return True, ""


@app.route("/track", methods=["GET", "POST"])
def track_view() -> tuple[Response, int]:
    """Track ``?path=`` (or a JSON body's ``path``): 202 when the push was taken, else 502."""
    body = request.get_json(silent=True) if request.method == "POST" else None
    path = request.args.get("path") or (body or {}).get("path") or "/"
    queued, error = track(str(path))
    if error:
        return jsonify(queued=False, error=error), 502
    return jsonify(queued=queued), 202


@app.get("/stats")
def stats_view() -> Response:
    """This worker's asyncbridge accounting, for the curious."""
    s = asyncbridge.stats()
    return jsonify(
        pid=s.pid,
        mode=_mode.read(),
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
