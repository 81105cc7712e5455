"""A WSGI app that hands one notification per request to the background loop.

Serve it with the gunicorn config next to it, or under uWSGI with ``uwsgi_app.py``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from typing import Any

import asyncbridge

log = logging.getLogger("wsgi_app")


async def notify(path: str) -> None:
    await asyncio.sleep(0.01)  # e.g. await asyncbridge.aiohttp.post_json(PUSH_URL, {...})
    log.warning("notified about %s", path)


def application(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    accepted = asyncbridge.run_soon(notify(environ.get("PATH_INFO", "/")))
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"accepted\n" if accepted else b"dropped\n"]
