"""Pusher events from a Flask view, sent on the asyncbridge loop through pusher's aiohttp backend.

The view signs the event in the request thread (``pusher_client.trigger`` validates and signs at
once, and returns a coroutine because the backend is asynchronous) and hands the coroutine to
``asyncbridge.run_soon``; the HTTP call to Pusher happens on the bridge loop after the response
has gone out.

In the batched mode (``create_app(batched=True)``, or ``PUSHER_BATCHED=1``) the view adds each
event to an ``asyncbridge.batcher`` instead, which sends up to 10 of them per call to Pusher's
batch-events API (its limit), so that a burst of comments costs a tenth of the HTTP calls.

Configuration comes from ``PUSHER_APP_ID``, ``PUSHER_KEY``, ``PUSHER_SECRET`` and either
``PUSHER_CLUSTER`` or ``PUSHER_HOST`` (with ``PUSHER_PORT`` and ``PUSHER_SSL=0`` for a local
stand-in). Serve it with ``gunicorn -c gunicorn.conf.py 'app:create_app()'``.
"""

from __future__ import annotations

import os
from typing import Any

import aiohttp
import pusher  # type: ignore[import-untyped]
from flask import Flask, request
from pusher.aiohttp import AsyncIOBackend  # type: ignore[import-untyped]
from pusher.http import process_response  # type: ignore[import-untyped]

import asyncbridge
from asyncbridge.aiohttp import session


class PooledAsyncIOBackend(AsyncIOBackend):  # type: ignore[misc]
    """pusher's ``AsyncIOBackend``, but sending through asyncbridge's shared aiohttp session.

    The stock backend opens a new ``ClientSession`` (so a new TCP and TLS connection) for every
    event and closes it afterwards. This one reuses the process's pooled session, which
    asyncbridge closes at shutdown after the pending events have been sent.
    """

    async def send_request(self, request: Any) -> Any:
        """Send one signed pusher request and decode the answer (raises on HTTP errors)."""
        async with session().request(
            request.method,
            f"{request.base_url}{request.path}",
            params=request.query_params,
            data=request.body,
            headers=request.headers,
            timeout=aiohttp.ClientTimeout(total=self.client.timeout),
        ) as response:
            body = await response.text("utf-8")
        return process_response(response.status, body)


def make_client(**overrides: Any) -> Any:
    """A ``pusher.Pusher`` configured from the environment, with the pooled backend.

    Args:
        **overrides: Keyword arguments of ``pusher.Pusher`` that replace the environment's.
    """
    env = os.environ
    settings: dict[str, Any] = {
        "app_id": env.get("PUSHER_APP_ID", ""),
        "key": env.get("PUSHER_KEY", ""),
        "secret": env.get("PUSHER_SECRET", ""),
        "cluster": env.get("PUSHER_CLUSTER"),
        "host": env.get("PUSHER_HOST"),
        "port": int(env["PUSHER_PORT"]) if env.get("PUSHER_PORT") else None,
        "ssl": env.get("PUSHER_SSL", "1") != "0",
        "backend": PooledAsyncIOBackend,
    }
    settings.update(overrides)
    return pusher.Pusher(**settings)


# Pusher's batch-events API takes at most 10 events per call.
PUSHER_BATCH_LIMIT = 10


def event_batcher(pusher_client: Any, *, max_delay: float = 0.05) -> asyncbridge.Batcher[Any]:
    """A batcher that sends events to Pusher 10 at a time with ``trigger_batch``.

    Args:
        pusher_client: The ``pusher.Pusher`` to send with.
        max_delay: Seconds the oldest event may wait for others before it is sent anyway.
    """

    async def send_events(events: list[dict[str, Any]]) -> None:
        # trigger_batch() signs the batch and returns the backend's coroutine: one HTTP call.
        await pusher_client.trigger_batch(events)

    return asyncbridge.batcher(send_events, max_size=PUSHER_BATCH_LIMIT, max_delay=max_delay)


def create_app(
    pusher_client: Any = None, *, batched: bool | None = None, max_delay: float = 0.05
) -> Flask:
    """The Flask app: ``POST /comments`` stores nothing and announces the comment on Pusher.

    Args:
        pusher_client: The ``pusher.Pusher`` to send with; one from the environment by default.
        batched: Send through Pusher's batch-events API, 10 events per call (default: the
            ``PUSHER_BATCHED`` environment variable).
        max_delay: In the batched mode, how long the oldest event may wait for others.
    """
    client = make_client() if pusher_client is None else pusher_client
    if batched is None:
        batched = os.environ.get("PUSHER_BATCHED", "0") not in ("", "0")
    events = event_batcher(client, max_delay=max_delay) if batched else None
    app = Flask(__name__)

    @app.post("/comments")
    def post_comment() -> tuple[dict[str, str], int]:
        comment = request.get_json()
        event = {"author": str(comment["author"]), "text": str(comment["text"])}
        if events is not None:
            # One item of the next batch; trigger_batch() checks and signs the batch on the loop.
            events.add({"channel": "comments", "name": "new-comment", "data": event})
        else:
            # trigger() checks and signs the event here, so a bad event fails this request;
            # the coroutine it returns does the HTTP call later, on the bridge loop.
            asyncbridge.run_soon(client.trigger("comments", "new-comment", event))
        return {"status": "accepted"}, 202

    return app
