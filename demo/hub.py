"""A local stand-in for a hosted push service, and the live dashboard it serves.

Endpoints:

- ``POST /events``: a JSON event ``{"id": ..., "path": ...}`` signed with the shared secret
  (see :mod:`demo.signing`). Unsigned or badly signed events get 401; accepted ones are counted
  and fanned out to every browser listening.
- ``GET /stream``: Server-Sent Events. A ``snapshot`` event with the counts so far, then one
  ``hit`` event per accepted event.
- ``GET /api/counts``: the counts as JSON (for tests and scripts).
- ``GET /``: the dashboard page (``demo/static/``).

Run alone with ``python -m demo.hub --port 8001``; :mod:`demo.run` starts it for you.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import logging
import os
import signal
import time
from pathlib import Path
from typing import Any

from aiohttp import web

from .signing import SIGNATURE_HEADER, load_secret, verify

__all__ = ["Hub", "main", "make_app"]

logger = logging.getLogger("demo.hub")

STATIC = Path(__file__).resolve().parent / "static"
_MAX_BODY = 16 * 1024
_SUBSCRIBER_BACKLOG = 1000
_RECENT_IDS = 100_000
_KEEPALIVE_S = 15.0
_CLOSE = None  # put in a subscriber's queue to end its stream


class Hub:
    """Counts signed events and fans them out to Server-Sent Events subscribers."""

    def __init__(self, secret: bytes, *, delay: float = 0.0) -> None:
        self._secret = secret
        self.delay = delay
        self.paths: collections.Counter[str] = collections.Counter()
        self.total = 0
        # Recent event ids, to count duplicates; bounded so that a long run does not grow.
        self._recent_ids: collections.OrderedDict[str, None] = collections.OrderedDict()
        self.duplicates = 0
        self.rejected = 0
        self._subscribers: set[asyncio.Queue[dict[str, Any] | None]] = set()

    def counts(self) -> dict[str, Any]:
        """Everything the dashboard shows, as one JSON-ready dict."""
        return {
            "total": self.total,
            "paths": dict(self.paths),
            "duplicates": self.duplicates,
            "rejected": self.rejected,
            "subscribers": len(self._subscribers),
        }

    async def post_event(self, request: web.Request) -> web.Response:
        body = await request.read()
        # The header value is never logged: a forged or replayed signature is no one's business
        # in the log, and the secret is not in it anyway.
        if not verify(self._secret, body, request.headers.get(SIGNATURE_HEADER)):
            self.rejected += 1
            logger.warning("rejected an event from %s: missing or bad signature", request.remote)
            return web.json_response({"error": "missing or bad signature"}, status=401)
        try:
            event = json.loads(body)
            path = str(event["path"])[:200]
            event_id = str(event["id"])
        except (ValueError, KeyError, TypeError):
            return web.json_response({"error": "expected JSON with id and path"}, status=400)
        if self.delay:  # a slow push service: work is still in flight when the app stops
            await asyncio.sleep(self.delay)
        if event_id in self._recent_ids:
            self.duplicates += 1
        self._recent_ids[event_id] = None
        if len(self._recent_ids) > _RECENT_IDS:
            self._recent_ids.popitem(last=False)
        self.paths[path] += 1
        self.total += 1
        message = {
            "id": event_id,
            "path": path,
            "count": self.paths[path],
            "total": self.total,
            "pid": event.get("pid"),
            "at": time.time(),
        }
        for queue in list(self._subscribers):
            try:
                queue.put_nowait(message)
            except asyncio.QueueFull:  # a stalled browser: drop it, it reconnects with a snapshot
                self._subscribers.discard(queue)
        return web.json_response({"ok": True, "total": self.total}, status=202)

    async def stream(self, request: web.Request) -> web.StreamResponse:
        queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue(_SUBSCRIBER_BACKLOG)
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",
            }
        )
        await response.prepare(request)
        self._subscribers.add(queue)
        try:
            await response.write(_sse("snapshot", self.counts()))
            while True:
                try:
                    message = await asyncio.wait_for(queue.get(), _KEEPALIVE_S)
                except TimeoutError:
                    await response.write(b": keep-alive\n\n")
                    continue
                if message is _CLOSE or queue not in self._subscribers:
                    break
                await response.write(_sse("hit", message))
        except (ConnectionResetError, ConnectionError):
            pass
        finally:
            self._subscribers.discard(queue)
        return response

    async def close_streams(self, app: web.Application) -> None:
        """End every open stream, so that the server's shutdown need not wait for them."""
        for queue in list(self._subscribers):
            self._subscribers.discard(queue)
            with contextlib.suppress(asyncio.QueueFull):  # a full one ends at its next message
                queue.put_nowait(_CLOSE)

    async def get_counts(self, request: web.Request) -> web.Response:
        return web.json_response(self.counts())

    async def dashboard(self, request: web.Request) -> web.FileResponse:
        return web.FileResponse(STATIC / "dashboard.html", headers={"Cache-Control": "no-cache"})


def _sse(event: str, data: dict[str, Any]) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


def make_app(secret: bytes | None = None, *, delay: float = 0.0) -> web.Application:
    """The hub's aiohttp application.

    Args:
        secret: The shared secret events must be signed with; defaults to :func:`load_secret`.
        delay: Seconds to wait before answering each accepted event (a slow service).
    """
    hub = Hub(load_secret() if secret is None else secret, delay=delay)
    app = web.Application(client_max_size=_MAX_BODY)
    app["hub"] = hub
    app.router.add_post("/events", hub.post_event)
    app.router.add_get("/stream", hub.stream)
    app.router.add_get("/api/counts", hub.get_counts)
    app.router.add_get("/", hub.dashboard)
    app.router.add_static("/static/", STATIC)
    app.on_shutdown.append(hub.close_streams)
    return app


async def _serve(host: str, port: int, *, managed: bool, delay: float) -> None:
    app = make_app(delay=delay)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=5.0)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound = runner.addresses[0][1]
    logger.info("hub listening on http://%s:%d (dashboard at /)", host, bound)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    if managed:
        # Ctrl-C in a terminal reaches the whole process group. Under demo.run the hub must
        # outlive gunicorn, whose workers push their last hits while they drain; demo.run stops
        # the hub with SIGTERM once gunicorn has exited.
        loop.add_signal_handler(signal.SIGINT, lambda: None)
        parent = os.getppid()
    else:
        loop.add_signal_handler(signal.SIGINT, stop.set)
        parent = 0
    while not stop.is_set():
        if parent and os.getppid() != parent:
            logger.warning("hub: demo.run went away; stopping")
            break
        try:
            await asyncio.wait_for(stop.wait(), 1.0)
        except TimeoutError:
            pass
    hub: Hub = app["hub"]
    logger.info(
        "hub stopping: %d events accepted (%d duplicates), %d rejected",
        hub.total,
        hub.duplicates,
        hub.rejected,
    )
    await runner.cleanup()


def main(argv: list[str] | None = None) -> None:
    """Command line: ``python -m demo.hub [--host 127.0.0.1] [--port 8001]``."""
    parser = argparse.ArgumentParser(prog="python -m demo.hub", description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8001, help="port (0: any free port)")
    parser.add_argument(
        "--delay", type=float, default=0.0, help="seconds to wait before accepting each event"
    )
    parser.add_argument(
        "--managed", action="store_true", help="ignore SIGINT; stop on SIGTERM (used by demo.run)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s [hub] %(levelname)s %(message)s")
    asyncio.run(_serve(args.host, args.port, managed=args.managed, delay=args.delay))


if __name__ == "__main__":
    main()
