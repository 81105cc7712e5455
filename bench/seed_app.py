"""The seed scenario's WSGI app: one notification per request, sent the way ``SEED_MODE`` says.

Served by ``bench/seed_scenario.py`` and ``bench/seed_batched.py``. Modes: ``ceiling`` (none),
``blocking`` (``requests.post`` in the request), ``thread`` (a thread per call), ``naive`` (one
POST per notification from a loop in a daemon thread), ``asyncbridge`` (one
``run_soon(post_json(...))`` per notification), ``lean`` (the same with a leaner session: no
total-timeout timer per request, no decompression, fewer default headers) and ``batched``
(``asyncbridge.batcher``: up to ``SEED_BATCH`` notifications, 10 by default, per POST to the
sink's ``/batch`` endpoint). Environment: ``SEED_SINK`` (the sink's base URL,
``http://host:port``; one notification goes to ``/notify``), ``SEED_OUT`` (a directory; each
worker writes ``<pid>.json`` with how many notifications it accepted, how many requests it
served, how many times asyncbridge's back-off slept and how many batches it flushed, when it
exits).
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
import requests

import asyncbridge
import asyncbridge.aiohttp

MODE = os.environ.get("SEED_MODE", "ceiling")
SINK = os.environ.get("SEED_SINK", "http://127.0.0.1:9") + "/notify"
BATCH_SINK = os.environ.get("SEED_SINK", "http://127.0.0.1:9") + "/batch"
OUT = Path(os.environ.get("SEED_OUT", "."))
BATCH = int(os.environ.get("SEED_BATCH", "10"))
MODES = ("ceiling", "blocking", "thread", "naive", "asyncbridge", "lean", "batched")
#: The modes that run asyncbridge (its gunicorn hooks and sizing, seed_gunicorn_conf.py).
BRIDGE_MODES = ("asyncbridge", "lean", "batched")
# Connections per worker to the sink: 2,000 req/s x 100 ms = 200 in flight, with headroom (see
# seed_gunicorn_conf.py). The same for the naive loop's session and asyncbridge's pool.
POOL = 500

# Diagnostics, off by default: SEED_BACKOFF=0 puts the core's back-off for a starved loop out of
# reach (as bench/handoff.py does for one regime); SEED_POST=raw sends with
# asyncbridge.aiohttp.session() exactly as the naive mode does, without post_json's decoding;
# SEED_HELPER_TIMEOUT=aiohttp gives the helper's session aiohttp's default timeouts (total 300 s,
# sock_connect 30 s: the naive session's) instead of the helper's (total 30, connect 5).
RAW_POST = os.environ.get("SEED_POST") == "raw"

if MODE == "lean":
    # What a request of the shared session costs besides the HTTP exchange itself: a timer for
    # the total timeout (one TimerHandle per request), the decompression set-up, default headers.
    asyncbridge.aiohttp.configure(
        limit=POOL,
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=5),
        auto_decompress=False,
        skip_auto_headers=("User-Agent", "Accept-Encoding"),
    )
elif MODE in BRIDGE_MODES:
    if os.environ.get("SEED_HELPER_TIMEOUT") == "aiohttp":
        asyncbridge.aiohttp.configure(
            limit=POOL, timeout=aiohttp.ClientTimeout(300, sock_connect=30)
        )
    else:
        asyncbridge.aiohttp.configure(limit=POOL)
    if os.environ.get("SEED_BACKOFF") == "0":
        import sys

        from asyncbridge import _bridge

        _bridge._BACKLOG_BEFORE_BACKOFF = sys.maxsize

# How often the core's back-off for a starved loop slept in this worker (reported at exit).
_back_offs = 0
if MODE in BRIDGE_MODES:
    from asyncbridge import _admission as _core

    _core_back_off = _core.back_off

    def _counting_back_off(lane: Any) -> None:
        global _back_offs
        _back_offs += 1
        _core_back_off(lane)

    _core.back_off = _counting_back_off

_ids = itertools.count()
_accepted = 0
_served = 0
_pid = os.getpid()
_session: requests.Session | None = None
_naive_loop: asyncio.AbstractEventLoop | None = None
_naive_session: aiohttp.ClientSession | None = None
_naive_lock = threading.Lock()


def _post_blocking(payload: dict[str, Any]) -> None:
    global _session
    if _session is None:
        _session = requests.Session()  # one per worker: keep-alive to the sink
    _session.post(SINK, json=payload, timeout=10).raise_for_status()


def _post_in_thread(payload: dict[str, Any]) -> None:
    requests.post(SINK, json=payload, timeout=10).raise_for_status()


async def _post_naive(payload: dict[str, Any]) -> None:
    global _naive_session
    if _naive_session is None:
        _naive_session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=POOL))
    async with _naive_session.post(SINK, json=payload) as response:
        response.raise_for_status()


def _naive() -> asyncio.AbstractEventLoop:
    # What people write first: a loop in a daemon thread, started lazily in each worker.
    global _naive_loop
    with _naive_lock:
        if _naive_loop is None:
            loop = asyncio.new_event_loop()
            threading.Thread(target=loop.run_forever, daemon=True).start()
            _naive_loop = loop
        return _naive_loop


async def _post_raw(payload: dict[str, Any]) -> None:
    async with asyncbridge.aiohttp.session().post(SINK, json=payload) as response:
        response.raise_for_status()


_flushes = 0


async def send_batch(events: list[dict[str, Any]]) -> None:
    """One POST of up to ``SEED_BATCH`` notifications to the sink's batch endpoint."""
    global _flushes
    _flushes += 1
    await asyncbridge.aiohttp.post_json(BATCH_SINK, {"events": events})


# Made in the batched mode only: the other modes stay as they were before batching existed.
_batcher = (
    asyncbridge.batcher(send_batch, max_size=BATCH, max_delay=0.05) if MODE == "batched" else None
)


def _notify(payload: dict[str, Any]) -> bool:
    if MODE == "blocking":
        _post_blocking(payload)
        return True
    if MODE == "thread":
        threading.Thread(target=_post_in_thread, args=(payload,)).start()
        return True
    if MODE == "naive":
        loop = _naive()
        loop.call_soon_threadsafe(loop.create_task, _post_naive(payload))
        return True
    if MODE in ("asyncbridge", "lean"):
        # As an app writes it: the helper's coroutine itself, with no wrapper of the benchmark's.
        if RAW_POST:
            return asyncbridge.run_soon(_post_raw(payload))
        return asyncbridge.run_soon(asyncbridge.aiohttp.post_json(SINK, payload))
    if _batcher is not None:
        return _batcher.add(payload)
    return False


def app(environ: dict[str, Any], start_response: Callable[..., object]) -> Iterable[bytes]:
    """Answer every request with a short body, after handing off one notification."""
    global _accepted, _served
    _served += 1
    status = "200 OK"
    if MODE != "ceiling":
        payload = {"id": f"{os.getpid()}-{next(_ids)}", "event": "order.created"}
        try:
            if _notify(payload):
                _accepted += 1
            else:
                status = "503 Service Unavailable"
        except requests.RequestException:
            status = "502 Bad Gateway"
    body = b"ok\n"
    start_response(status, [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


def _write_count() -> None:
    if os.getpid() == _pid:
        (OUT / f"{_pid}.json").write_text(
            json.dumps(
                {
                    "accepted": _accepted,
                    "served": _served,
                    "back_offs": _back_offs,
                    "flushes": _flushes,
                }
            )
        )


atexit.register(_write_count)
