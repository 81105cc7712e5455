"""A real aiohttp server on 127.0.0.1 that counts the notifications it receives.

It stands in for a push service or webhook receiver. It runs its own loop in a thread of the test
process, so tests read its counters directly. It can be made slow, failing (HTTP 500) or refusing
(the listening socket closed, so connections are refused).

Notifications are JSON objects with an ``id`` field; the sink records every id it was sent, so a
test can tell lost notifications from duplicates.
"""

from __future__ import annotations

import asyncio
import collections
import threading
import time
from collections.abc import Awaitable, Callable

from aiohttp import web

__all__ = ["Sink", "wait_until"]


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.02) -> bool:
    """Poll ``predicate`` until it is true or ``timeout`` seconds pass; return its last value."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return predicate()
        time.sleep(interval)


class Sink:
    """Counts POSTs to ``/notify``. Use as a context manager or call start()/stop()."""

    def __init__(self, *, delay: float = 0.0, status: int = 200) -> None:
        self.delay = delay
        self.status = status
        self.ids: collections.Counter[str] = collections.Counter()
        # Posts whose sender had disconnected by the time the answer was ready (never received).
        self.abandoned: collections.Counter[str] = collections.Counter()
        self.requests = 0  # every POST seen, whatever the answer
        self.peers: set[tuple[str, int]] = set()  # distinct client (host, port): TCP connections
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None
        self.port = 0
        # More (method, path, handler) routes, added when the sink starts.
        self.routes: list[
            tuple[str, str, Callable[[web.Request], Awaitable[web.StreamResponse]]]
        ] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/notify"

    @property
    def received(self) -> int:
        """Notifications answered with 2xx (counted once per POST, duplicates included)."""
        with self._lock:
            return sum(self.ids.values())

    def duplicates(self) -> int:
        with self._lock:
            return sum(n - 1 for n in self.ids.values() if n > 1)

    async def _notify(self, request: web.Request) -> web.Response:
        body = await request.json()
        peer = request.transport.get_extra_info("peername") if request.transport else None
        with self._lock:
            self.requests += 1
            if peer:
                self.peers.add((peer[0], peer[1]))
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.status >= 300:
            return web.Response(status=self.status, text="sink told to fail")
        # aiohttp runs a handler to its end after the client has gone, so a post from a process
        # that died while waiting would be counted on arrival. Count it only if its sender is
        # still connected when the answer goes out; the rest are `abandoned`, not received.
        transport = request.transport
        if transport is None or transport.is_closing():
            with self._lock:
                self.abandoned[str(body.get("id"))] += 1
            return web.json_response({"ok": False}, status=499)
        with self._lock:
            self.ids[str(body.get("id"))] += 1
        return web.json_response({"ok": True})

    async def _count(self, request: web.Request) -> web.Response:
        return web.json_response({"received": self.received, "requests": self.requests})

    def start(self) -> Sink:
        started = threading.Event()
        errors: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                loop.run_until_complete(self._start_site())
            except BaseException as exc:
                errors.append(exc)
                started.set()
                loop.close()
                return
            started.set()
            loop.run_forever()
            loop.run_until_complete(self._runner.cleanup() if self._runner else asyncio.sleep(0))
            loop.close()

        self._thread = threading.Thread(target=run, name="sink", daemon=True)
        self._thread.start()
        if not started.wait(10):
            raise TimeoutError("the sink did not start within 10 s")
        if errors:
            raise errors[0]
        return self

    async def _start_site(self) -> None:
        app = web.Application()
        app.router.add_post("/notify", self._notify)
        app.router.add_get("/count", self._count)
        for method, path, handler in self.routes:
            app.router.add_route(method, path, handler)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        self._site = web.TCPSite(self._runner, "127.0.0.1", self.port)
        await self._site.start()
        server = self._site._server
        assert isinstance(server, asyncio.Server)
        self.port = server.sockets[0].getsockname()[1]

    def refuse(self) -> None:
        """Close the listening socket: new connections are refused until ``accept()``."""
        assert self._loop is not None and self._site is not None
        asyncio.run_coroutine_threadsafe(self._site.stop(), self._loop).result(10)

    def accept(self) -> None:
        """Listen again on the same port after ``refuse()``."""
        assert self._loop is not None
        asyncio.run_coroutine_threadsafe(self._restart_site(), self._loop).result(10)

    async def _restart_site(self) -> None:
        assert self._runner is not None
        self._site = web.TCPSite(self._runner, "127.0.0.1", self.port)
        await self._site.start()

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is not None and thread is not None and thread.is_alive():
            loop.call_soon_threadsafe(loop.stop)
            thread.join(10)

    def __enter__(self) -> Sink:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
