"""The push of one hit to the hub, signed: on asyncbridge's loop, or inline in the request."""

from __future__ import annotations

import json
import os
import urllib.request
from typing import Any

import asyncbridge
import asyncbridge.aiohttp

from .signing import SIGNATURE_HEADER, load_secret, sign

__all__ = ["HUB_URL", "hand_off", "push_hit", "push_inline"]

HUB_URL = os.environ.get("DEMO_HUB_URL", "http://127.0.0.1:8001").rstrip("/")
INLINE_TIMEOUT = 10.0

# Read once at import (in each worker); never logged.
_SECRET = load_secret()


async def push_hit(hit: dict[str, Any]) -> None:
    """Send one hit to the hub, signed. Runs on the bridge loop; failures are logged there.

    ``post_json`` sends ``json.dumps(payload)`` (the session's default serializer), so the
    signature is computed over exactly those bytes.
    """
    body = json.dumps(hit).encode()
    await asyncbridge.aiohttp.post_json(
        f"{HUB_URL}/events", hit, headers={SIGNATURE_HEADER: sign(_SECRET, body)}
    )


def hand_off(hit: dict[str, Any]) -> bool:
    """Hand the push to the worker's background loop and return at once.

    Returns:
        Whether asyncbridge accepted it (False only when its backlog is full or it is shutting
        down; the drop is counted in ``asyncbridge.stats()``).
    """
    return asyncbridge.run_soon(push_hit(hit))


def push_inline(hit: dict[str, Any]) -> None:
    """Send one hit to the hub from the request itself, blocking until the hub answers.

    The way without a background loop: the request waits for the push's round trip.

    Raises:
        OSError: The hub could not be reached, or answered with an error status
            (``urllib.error.HTTPError`` is an ``OSError``).
    """
    body = json.dumps(hit).encode()
    request = urllib.request.Request(
        f"{HUB_URL}/events",
        data=body,
        headers={"Content-Type": "application/json", SIGNATURE_HEADER: sign(_SECRET, body)},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=INLINE_TIMEOUT) as response:
        response.read()
