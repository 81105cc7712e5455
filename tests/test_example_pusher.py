"""examples/pusher against a local stand-in for the Pusher HTTP API (never the real service).

The stand-in is an aiohttp app on 127.0.0.1 that checks what Pusher checks: the path
``/apps/<app_id>/events`` (or ``/batch_events``, at most 10 events), the JSON body and its
``body_md5``, the key, a fresh timestamp, and the HMAC-SHA256 ``auth_signature`` recomputed with
the test secret. Anything else gets 401 (400 for a batch of more than 10 events).
"""

from __future__ import annotations

import asyncio
import gc
import hashlib
import hmac
import importlib.util
import json
import threading
import time
import warnings
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import pytest
from aiohttp import web

import asyncbridge.aiohttp as ab_aiohttp
from asyncbridge.pytest_plugin import RecordingBridge

from .e2e.procs import ROOT

APP_ID = "4242"
KEY = "test-key"
SECRET = "test-secret"


def _load_example() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "pusher_example_app", ROOT / "examples" / "pusher" / "app.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


example = _load_example()


def expected_signature(secret: str, method: str, path: str, query: dict[str, str]) -> str:
    """Pusher REST auth: HMAC-SHA256 of "METHOD\\npath\\nsorted key=value&..." with the secret."""
    params = "&".join(f"{k}={v}" for k, v in sorted(query.items()) if k != "auth_signature")
    to_sign = f"{method}\n{path}\n{params}"
    return hmac.new(secret.encode(), to_sign.encode(), hashlib.sha256).hexdigest()


class FakePusher:
    """A stand-in for ``api.pusherapp.com`` on 127.0.0.1, in a thread of the test process."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.batches: list[list[dict[str, Any]]] = []  # each call to batch_events, in order
        self.rejected: list[str] = []
        self.peers: set[tuple[str, int]] = set()
        self.port = 0
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    async def _events(self, request: web.Request) -> web.Response:
        body = await request.read()
        peer = request.transport.get_extra_info("peername") if request.transport else None
        with self._lock:
            if peer:
                self.peers.add((peer[0], peer[1]))
        problem = self._check(request, body)
        if problem:
            with self._lock:
                self.rejected.append(problem)
            return web.Response(status=401, text=problem)
        with self._lock:
            self.events.append(json.loads(body))
        return web.json_response({})

    async def _batch_events(self, request: web.Request) -> web.Response:
        body = await request.read()
        problem = self._check_signed(request, body)
        batch = None if problem else json.loads(body).get("batch")
        if problem is None:
            if not isinstance(batch, list) or not batch:
                problem = "batch must be a non-empty list"
            elif len(batch) > 10:
                problem = f"batch of {len(batch)} events; at most 10"
            else:
                problem = next(filter(None, map(self._check_event, batch)), None)
        if problem:
            with self._lock:
                self.rejected.append(problem)
            return web.Response(status=400 if "at most" in problem else 401, text=problem)
        assert batch is not None
        with self._lock:
            self.batches.append(batch)
            self.events.extend(
                {"name": e["name"], "data": e["data"], "channels": [e["channel"]]} for e in batch
            )
        return web.json_response({"batch": [{} for _ in batch]})

    def _check_event(self, event: Any) -> str | None:
        if not isinstance(event, dict):
            return "an event must be an object"
        if not all(isinstance(event.get(k), str) for k in ("name", "data", "channel")):
            return "name, data and channel must be strings"
        return None

    def _check(self, request: web.Request, body: bytes) -> str | None:
        problem = self._check_signed(request, body)
        if problem:
            return problem
        try:
            event = json.loads(body)
        except ValueError:
            return "body is not JSON"
        if not isinstance(event.get("name"), str) or not isinstance(event.get("data"), str):
            return "name and data must be strings"
        if not isinstance(event.get("channels"), list) or not event["channels"]:
            return "channels must be a non-empty list"
        return None

    def _check_signed(self, request: web.Request, body: bytes) -> str | None:
        query = dict(request.query)
        if request.content_type != "application/json":
            return f"content type {request.content_type}"
        if query.get("auth_key") != KEY:
            return "unknown key"
        if query.get("auth_version") != "1.0":
            return "auth_version"
        if abs(time.time() - int(query.get("auth_timestamp", "0"))) > 600:
            return "stale timestamp"
        if query.get("body_md5") != hashlib.md5(body).hexdigest():
            return "body_md5 mismatch"
        signature = expected_signature(SECRET, request.method, request.path, query)
        if not hmac.compare_digest(query.get("auth_signature", ""), signature):
            return "bad signature"
        try:
            json.loads(body)
        except ValueError:
            return "body is not JSON"
        return None

    async def _serve(self, started: threading.Event) -> None:
        app = web.Application()
        app.router.add_post(f"/apps/{APP_ID}/events", self._events)
        app.router.add_post(f"/apps/{APP_ID}/batch_events", self._batch_events)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert isinstance(server, asyncio.Server)
        self.port = server.sockets[0].getsockname()[1]
        self._stop = asyncio.Event()
        started.set()
        try:
            await self._stop.wait()
        finally:
            await runner.cleanup()

    def __enter__(self) -> FakePusher:
        started = threading.Event()
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._thread = threading.Thread(
            target=lambda: loop.run_until_complete(self._serve(started)), name="fake-pusher"
        )
        self._thread.start()
        if not started.wait(10):
            raise TimeoutError("the Pusher stand-in did not start within 10 s")
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._loop is not None and self._thread is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)
        self._loop.close()


@pytest.fixture(autouse=True)
def _no_unclosed_sessions() -> Iterator[None]:
    """Fail the test if any aiohttp session or connector it made was left open."""
    yield
    # No gc.collect() here: it would hide a leak that depends on earlier bridges staying alive.
    assert [s for s, _ in list(ab_aiohttp._sessions.values()) if not s.closed] == []


@pytest.fixture
def fake_pusher() -> Iterator[FakePusher]:
    with FakePusher() as fake:
        yield fake


@pytest.fixture
def asyncbridge_options() -> dict[str, Any]:
    return {"max_concurrency": 4}


def client_for(fake: FakePusher, **overrides: Any) -> Any:
    settings: dict[str, Any] = {
        "app_id": APP_ID,
        "key": KEY,
        "secret": SECRET,
        "host": "127.0.0.1",
        "port": fake.port,
        "ssl": False,
    }
    settings.update(overrides)
    return example.make_client(**settings)


def post_comments(app: Any, count: int) -> None:
    client = app.test_client()
    for i in range(count):
        response = client.post("/comments", json={"author": f"user{i}", "text": f"comment {i}"})
        assert response.status_code == 202


def test_signature_helper_matches_the_published_pusher_example() -> None:
    # The worked example of https://pusher.com/docs/channels/library_auth_reference/rest-api
    query = {
        "auth_key": "278d425bdf160c739803",
        "auth_timestamp": "1353088179",
        "auth_version": "1.0",
        "body_md5": "ec365a775a4cd0599faeb73354201b6f",
    }
    assert (
        expected_signature("7ad3773142a6692b25b8", "POST", "/apps/3/events", query)
        == "da454824c97ba181a32ccc17a72625ba02771f50b50e1e7430e47a1f3f457e6c"
    )


def test_view_events_reach_the_stand_in_signed_over_pooled_connections(
    asyncbridge_bridge: RecordingBridge, fake_pusher: FakePusher
) -> None:
    post_comments(example.create_app(client_for(fake_pusher)), 30)

    assert asyncbridge_bridge.drain(30)
    assert (asyncbridge_bridge.completed, asyncbridge_bridge.failed) == (30, 0)
    assert asyncbridge_bridge.exceptions == []
    assert fake_pusher.rejected == []
    assert len(fake_pusher.events) == 30
    assert {e["name"] for e in fake_pusher.events} == {"new-comment"}
    assert all(e["channels"] == ["comments"] for e in fake_pusher.events)
    texts = sorted(json.loads(e["data"])["text"] for e in fake_pusher.events)
    assert texts == sorted(f"comment {i}" for i in range(30))
    # The shared session pools connections: at most max_concurrency (4) of them.
    assert 1 <= len(fake_pusher.peers) <= 4


def test_wrong_secret_is_refused_and_counted_as_a_failure(
    asyncbridge_bridge: RecordingBridge, fake_pusher: FakePusher
) -> None:
    post_comments(example.create_app(client_for(fake_pusher, secret="not-the-secret")), 2)

    assert asyncbridge_bridge.drain(30)
    assert (asyncbridge_bridge.completed, asyncbridge_bridge.failed) == (0, 2)
    assert fake_pusher.rejected == ["bad signature", "bad signature"]
    assert fake_pusher.events == []
    assert [type(e).__name__ for e in asyncbridge_bridge.exceptions] == ["PusherBadAuth"] * 2


def test_body_changed_after_signing_is_refused(
    asyncbridge_bridge: RecordingBridge, fake_pusher: FakePusher
) -> None:
    class TamperingBackend(example.PooledAsyncIOBackend):  # type: ignore[misc,name-defined]
        async def send_request(self, request: Any) -> Any:
            request.body = request.body.replace(b"comment 0", b"comment X")
            return await super().send_request(request)

    post_comments(example.create_app(client_for(fake_pusher, backend=TamperingBackend)), 1)

    assert asyncbridge_bridge.drain(30)
    assert asyncbridge_bridge.failed == 1
    assert fake_pusher.rejected == ["body_md5 mismatch"]


def test_stock_asyncio_backend_works_and_leaves_no_unclosed_session(
    asyncbridge_bridge: RecordingBridge, fake_pusher: FakePusher
) -> None:
    from pusher.aiohttp import AsyncIOBackend  # type: ignore[import-untyped]

    app = example.create_app(client_for(fake_pusher, backend=AsyncIOBackend))
    gc.collect()  # garbage of earlier tests is not this backend's
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        post_comments(app, 5)
        assert asyncbridge_bridge.drain(30)
        gc.collect()
    assert [str(w.message) for w in caught if "nclosed" in str(w.message)] == []
    assert (asyncbridge_bridge.completed, asyncbridge_bridge.failed) == (5, 0)
    assert len(fake_pusher.events) == 5
    # One ClientSession, so one new connection, per event: why the example pools instead.
    assert len(fake_pusher.peers) == 5


def test_batched_mode_sends_ten_events_per_call_and_counts_each_event(
    asyncbridge_bridge: RecordingBridge, fake_pusher: FakePusher
) -> None:
    # A long max_delay: only full batches go out while comments arrive; drain() sends the rest.
    app = example.create_app(client_for(fake_pusher), batched=True, max_delay=60)
    post_comments(app, 25)

    assert asyncbridge_bridge.drain(30)
    assert fake_pusher.rejected == []
    # Flushes run concurrently (a slot each), so the calls may arrive in any order; each call
    # carries its events in the order they were added.
    calls = sorted(
        [int(json.loads(e["data"])["text"].split()[1]) for e in batch]
        for batch in fake_pusher.batches
    )
    assert calls == [list(range(0, 10)), list(range(10, 20)), list(range(20, 25))]
    assert all(
        e["channels"] == ["comments"] and e["name"] == "new-comment" for e in fake_pusher.events
    )
    # Accounting is by event: 25 accepted and completed, in 3 calls.
    s = asyncbridge_bridge.stats()
    assert (s.accepted, s.completed, s.failed) == (25, 25, 0)
    assert asyncbridge_bridge.exceptions == []


def test_batched_mode_under_a_short_delay_never_exceeds_the_limit(
    asyncbridge_bridge: RecordingBridge, fake_pusher: FakePusher
) -> None:
    app = example.create_app(client_for(fake_pusher), batched=True)  # max_delay 50 ms
    post_comments(app, 37)

    assert asyncbridge_bridge.drain(30)
    assert fake_pusher.rejected == []
    assert all(1 <= len(batch) <= 10 for batch in fake_pusher.batches)
    assert len(fake_pusher.batches) >= 4  # 37 events need at least 4 calls of 10
    assert sorted(json.loads(e["data"])["text"] for e in fake_pusher.events) == sorted(
        f"comment {i}" for i in range(37)
    )
    assert asyncbridge_bridge.stats().completed == 37


def test_a_refused_batch_fails_each_of_its_events(
    asyncbridge_bridge: RecordingBridge, fake_pusher: FakePusher
) -> None:
    app = example.create_app(
        client_for(fake_pusher, secret="not-the-secret"), batched=True, max_delay=60
    )
    post_comments(app, 12)

    assert asyncbridge_bridge.drain(30)
    assert fake_pusher.rejected == ["bad signature", "bad signature"]
    assert fake_pusher.events == []
    s = asyncbridge_bridge.stats()
    assert (s.accepted, s.completed, s.failed) == (12, 0, 12)
    # One exception per call (a batch of 10, then of 2), each failing all its events.
    assert [type(e).__name__ for e in asyncbridge_bridge.exceptions] == ["PusherBadAuth"] * 2


def test_the_stand_in_refuses_a_batch_of_more_than_ten(
    asyncbridge_bridge: RecordingBridge, fake_pusher: FakePusher
) -> None:
    client = client_for(fake_pusher)
    events = [{"channel": "comments", "name": "e", "data": str(i)} for i in range(11)]
    future = asyncbridge_bridge.submit(client.trigger_batch(events))
    with pytest.raises(Exception, match="at most 10"):
        future.result(30)
    assert fake_pusher.rejected == ["batch of 11 events; at most 10"]
