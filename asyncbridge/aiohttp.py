"""One pooled :class:`aiohttp.ClientSession` per process, living on the bridge loop.

Install with ``pip install asyncbridge-loop[aiohttp]``. Inside a coroutine handed to
:func:`asyncbridge.run_soon` (or ``submit``/``run``)::

    async def notify(user_id: int) -> None:
        await asyncbridge.aiohttp.post_json(PUSH_URL, {"user": user_id})

The session is created on first use in each process (a forked child gets its own), keeps
connections alive between calls, and is closed at shutdown after pending work has drained, so
no "Unclosed client session" warning ever appears.
"""

from __future__ import annotations

import asyncio
import json
import threading
import weakref
from typing import Any

import aiohttp

from ._bridge import Bridge
from ._errors import AsyncBridgeError

__all__ = ["configure", "post_json", "session"]

# A total bound on every request, and a shorter one on getting a connection. No sock_read timer:
# aiohttp re-arms it on every read, and the total already bounds a stalled answer.
_DEFAULT_TIMEOUT = aiohttp.ClientTimeout(total=30, connect=5)
_settings: dict[str, Any] = {
    "limit": 100,
    "limit_per_host": 0,
    "timeout": _DEFAULT_TIMEOUT,
    "session_kwargs": {},
}
# Each bridge loop's session, with the thread that runs the loop.
_sessions: weakref.WeakKeyDictionary[
    asyncio.AbstractEventLoop, tuple[aiohttp.ClientSession, threading.Thread]
] = weakref.WeakKeyDictionary()


def configure(
    *,
    limit: int = 100,
    limit_per_host: int = 0,
    timeout: aiohttp.ClientTimeout = _DEFAULT_TIMEOUT,
    **session_kwargs: Any,
) -> None:
    """Set how sessions created from now on are built.

    Each call replaces every setting: one not given returns to its default. A session that
    already exists keeps its settings until the bridge shuts down.

    Args:
        limit: Total simultaneous connections in the pool (aiohttp's ``TCPConnector.limit``).
        limit_per_host: Simultaneous connections per host; 0 for no per-host limit.
        timeout: Default request timeouts (total 30 s, connect 5 s).
        **session_kwargs: Passed to :class:`aiohttp.ClientSession`, e.g. ``headers``.

    Raises:
        TypeError: A limit that is not an int, or a timeout that is not a ClientTimeout.
        ValueError: A negative limit.
    """
    for name, value in (("limit", limit), ("limit_per_host", limit_per_host)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if limit < 0 or limit_per_host < 0:
        raise ValueError("limit and limit_per_host must be 0 (no limit) or more")
    if not isinstance(timeout, aiohttp.ClientTimeout):
        raise TypeError(f"timeout must be an aiohttp.ClientTimeout, got {type(timeout).__name__}")
    _settings.update(
        limit=limit, limit_per_host=limit_per_host, timeout=timeout, session_kwargs=session_kwargs
    )


def session() -> aiohttp.ClientSession:
    """This process's shared session, created on first use.

    Returns:
        The :class:`aiohttp.ClientSession` bound to the bridge loop.

    Raises:
        AsyncBridgeError: Not called from a coroutine running on a bridge loop (one handed to
            ``run_soon``, ``submit`` or ``run``); a session belongs to one loop.
    """
    # The path taken by every request once the session exists: sessions are made only on bridge
    # loops, in the loop's own thread. The thread must match too: under gevent, request greenlets
    # share the hub's OS thread and so see the bridge loop as their running loop.
    loop = asyncio._get_running_loop()
    entry = None if loop is None else _sessions.get(loop)
    if entry is not None and entry[1] is threading.current_thread() and not entry[0].closed:
        return entry[0]
    bridge = Bridge.current()
    if bridge is None:
        raise AsyncBridgeError(
            "asyncbridge.aiohttp.session() may only be called from a coroutine running on the "
            "bridge loop: hand the coroutine that uses it to asyncbridge.run_soon() (or submit/run)"
        )
    assert loop is not None  # Bridge.current() found it running
    connector = aiohttp.TCPConnector(
        limit=_settings["limit"], limit_per_host=_settings["limit_per_host"]
    )
    created = aiohttp.ClientSession(
        connector=connector, timeout=_settings["timeout"], **_settings["session_kwargs"]
    )
    _sessions[loop] = (created, threading.current_thread())

    async def close() -> None:
        # The session refers to its loop, so the weak key alone would never let the entry go.
        _sessions.pop(loop, None)
        await created.close()

    bridge.add_close_callback(close)
    return created


async def post_json(url: str, payload: Any, **kwargs: Any) -> Any:
    """POST ``payload`` as JSON with the shared session and return the decoded answer.

    Args:
        url: Where to post.
        payload: Anything :func:`json.dumps` accepts, or ``bytes`` already serialized (sent
            as they are, e.g. when a signature covers the exact body).
        **kwargs: Passed to :meth:`aiohttp.ClientSession.post` (``headers``, ``timeout``...).

    Returns:
        The response body: decoded JSON when the server says it is JSON (``application/json``
        or any ``+json`` type), else text.

    Raises:
        aiohttp.ClientResponseError: The server answered with a 4xx or 5xx status.
        aiohttp.ClientError: The request failed (connection refused, timeout...).
    """
    shared = session()
    if isinstance(payload, bytes | bytearray):
        headers = {"Content-Type": "application/json", **kwargs.pop("headers", {})}
        request = shared.post(url, data=bytes(payload), headers=headers, **kwargs)
    else:
        request = shared.post(url, json=payload, **kwargs)
    async with request as response:
        response.raise_for_status()
        content_type = response.content_type
        if content_type == "application/json" or content_type.endswith("+json"):
            # Any +json type, as documented (response.json() takes application/... types only).
            return _decode_json(response, await _body(response, bool(shared.trace_configs)))
        return await response.text()


async def _body(response: aiohttp.ClientResponse, traced: bool) -> bytes:
    """The answer's body: taken at once when it is all in (a short answer comes with its headers).

    ``response.read()`` costs its awaits even then, on every notification: in the seed
    scenario's gunicorn workers the loop spent 25-50 us more per notification with it
    (docs/performance.md, "On a quiet machine"). A session with ``trace_configs`` (``traced``)
    still goes through ``read()``, which sends their ``on_response_chunk_received``.
    """
    content = response.content
    if not traced and content.is_eof() and content.exception() is None:
        # Kept where read() keeps it: get_encoding() hands it to a fallback_charset_resolver.
        response._body = body = content.read_nowait()
        return body
    return await response.read()


def _decode_json(response: aiohttp.ClientResponse, body: bytes) -> Any:
    """Decode a JSON answer step for step as ``response.json()`` does: an empty one is None; the
    stripped bytes are decoded strictly with ``response.get_encoding()`` (a ``charset`` Python
    knows, else UTF-8 for application/json, else the session's fallback_charset_resolver), then
    parsed. Not json.loads(bytes): it guesses UTF-16/32 and a BOM and lets surrogates through,
    so it decodes answers that json() refuses."""
    stripped = body.strip()
    if not stripped:
        return None
    return json.loads(stripped.decode(response.get_encoding()))
