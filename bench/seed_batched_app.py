"""The batched seed scenario's WSGI app: one event per request, sent the way ``SEED_MODE`` says.

Modes: ``ceiling`` (no event), ``naive`` (one POST per event from a loop in a daemon thread, as in
``seed_app.py``), ``asyncbridge`` (one ``run_soon(post_json(...))`` per event), ``lean`` (the same
with a leaner session: no total-timeout timer per request, no decompression, fewer default
headers) and ``batched`` (``asyncbridge.batcher``: up to ``SEED_BATCH`` events, 10 by default, per
POST to the sink's batch endpoint). Environment: ``SEED_SINK`` (the sink's base URL,
``http://host:port``), ``SEED_OUT`` (each worker writes ``<pid>.json`` with the events it accepted,
the requests it served and the flushes it made, when it exits).
"""

from __future__ import annotations

import asyncio
import atexit
import itertools
import json
import os
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import aiohttp

import asyncbridge
import asyncbridge.aiohttp

MODE = os.environ.get("SEED_MODE", "ceiling")
SINK = os.environ.get("SEED_SINK", "http://127.0.0.1:9")
OUT = Path(os.environ.get("SEED_OUT", "."))
BATCH = int(os.environ.get("SEED_BATCH", "10"))
# Connections per worker to the sink, as in seed_app.py (2,000 req/s x 100 ms, with headroom).
POOL = 500

if MODE in ("asyncbridge", "batched"):
    asyncbridge.aiohttp.configure(limit=POOL)
elif MODE == "lean":
    # What a request of the shared session costs besides the HTTP exchange itself: a timer for
    # the total timeout (one TimerHandle per request), the decompression set-up, default headers.
    asyncbridge.aiohttp.configure(
        limit=POOL,
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=5),
        auto_decompress=False,
        skip_auto_headers=("User-Agent", "Accept-Encoding"),
    )


_flushes = 0


async def send_batch(events: list[dict[str, Any]]) -> None:
    """One POST of up to ``SEED_BATCH`` events to the sink's batch endpoint."""
    global _flushes
    _flushes += 1
    await asyncbridge.aiohttp.post_json(f"{SINK}/batch", {"events": events})


_batcher = asyncbridge.batcher(send_batch, max_size=BATCH, max_delay=0.05)

_ids = itertools.count()
_accepted = 0
_served = 0
_pid = os.getpid()
_naive_loop: asyncio.AbstractEventLoop | None = None
_naive_session: aiohttp.ClientSession | None = None
_naive_lock = threading.Lock()


async def _post_naive(payload: dict[str, Any]) -> None:
    global _naive_session
    if _naive_session is None:
        _naive_session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=POOL))
    async with _naive_session.post(f"{SINK}/notify", json=payload) as response:
        response.raise_for_status()


def _naive() -> asyncio.AbstractEventLoop:
    global _naive_loop
    with _naive_lock:
        if _naive_loop is None:
            loop = asyncio.new_event_loop()
            threading.Thread(target=loop.run_forever, daemon=True).start()
            _naive_loop = loop
        return _naive_loop


def _send(event: dict[str, Any]) -> bool:
    if MODE == "naive":
        loop = _naive()
        loop.call_soon_threadsafe(loop.create_task, _post_naive(event))
        return True
    if MODE in ("asyncbridge", "lean"):
        return asyncbridge.run_soon(asyncbridge.aiohttp.post_json(f"{SINK}/notify", event))
    if MODE == "batched":
        return _batcher.add(event)
    return False


def app(environ: dict[str, Any], start_response: Callable[..., object]) -> Iterable[bytes]:
    """Answer every request with a short body, after handing off one event."""
    global _accepted, _served
    _served += 1
    status = "200 OK"
    if MODE != "ceiling":
        if _send({"id": f"{_pid}-{next(_ids)}", "event": "order.created"}):
            _accepted += 1
        else:
            status = "503 Service Unavailable"
    body = b"ok\n"
    start_response(status, [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


def _write_count() -> None:
    if os.getpid() == _pid:
        counts = {"accepted": _accepted, "served": _served, "flushes": _flushes}
        (OUT / f"{_pid}.json").write_text(json.dumps(counts))


atexit.register(_write_count)
