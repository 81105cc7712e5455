"""asyncbridge.aiohttp against a real aiohttp server on 127.0.0.1 (tests/e2e/sink.py)."""

from __future__ import annotations

import asyncio
import gc
import json
import os
import threading
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web

import asyncbridge.aiohttp as ab_aiohttp
from asyncbridge import AsyncBridgeError, Bridge, Stats

from .e2e.sink import Sink
from .helpers import aiohttp_defaults, wait_child


def _outcomes(s: Stats) -> tuple[int, int, int, int, int, int, int]:
    return (s.accepted, s.completed, s.failed, s.timed_out, s.cancelled, s.pending, s.running)


_default_settings = pytest.fixture(autouse=True)(aiohttp_defaults)


_KEPT: list[Bridge] = []


def _retire(bridge: Bridge) -> None:
    """Shut ``bridge`` down but keep it alive, as a test framework may.

    A shut-down bridge that is still referenced must not pass for a later one whose loop thread
    reuses its thread's ident (Bridge.current() once matched by ident, and sessions of later
    bridges were never closed); the autouse check above would catch that.
    """
    bridge.shutdown(5)
    _KEPT.append(bridge)


@pytest.fixture
def sink() -> Iterator[Sink]:
    with Sink() as s:
        yield s


@pytest.fixture
def bridge() -> Iterator[Bridge]:
    b = Bridge(max_concurrency=8)
    yield b
    _retire(b)


async def _current_session() -> aiohttp.ClientSession:
    return ab_aiohttp.session()


def _unclosed_warnings(action: Callable[[], None]) -> list[str]:
    """Run ``action``, collect garbage, and return every "Unclosed ..." warning it caused."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        action()
        gc.collect()
    return [str(w.message) for w in caught if "Unclosed" in str(w.message)]


# -- connection reuse --------------------------------------------------------------------------


def test_500_posts_reuse_a_handful_of_connections(sink: Sink, bridge: Bridge) -> None:
    for i in range(500):
        assert bridge.run_soon(ab_aiohttp.post_json(sink.url, {"id": i})) is True
    assert bridge.drain(60)
    assert _outcomes(bridge.stats()) == (500, 500, 0, 0, 0, 0, 0)
    assert sink.received == 500
    assert sink.duplicates() == 0
    assert sorted(map(int, sink.ids)) == list(range(500))
    # max_concurrency=8: at most 8 requests in flight, so at most 8 pooled connections.
    assert 1 <= len(sink.peers) <= 8
    report = bridge.shutdown(5)
    assert report.clean


def test_connector_limit_caps_connections(sink: Sink, bridge: Bridge) -> None:
    ab_aiohttp.configure(limit=2)
    sink.delay = 0.05
    futures = [bridge.submit(ab_aiohttp.post_json(sink.url, {"id": i})) for i in range(20)]
    assert [f.result(30) for f in futures] == [{"ok": True}] * 20
    assert sink.received == 20
    assert 1 <= len(sink.peers) <= 2


# -- where session() may be called -------------------------------------------------------------


def test_session_outside_the_bridge_loop_raises_a_clear_error() -> None:
    with pytest.raises(AsyncBridgeError, match=r"only be called from a coroutine running on the"):
        ab_aiohttp.session()


def test_session_on_a_foreign_event_loop_raises() -> None:
    async def on_foreign_loop() -> None:
        ab_aiohttp.session()

    with pytest.raises(AsyncBridgeError, match=r"asyncbridge\.run_soon\(\)"):
        asyncio.run(on_foreign_loop())


def test_session_refuses_another_thread_that_sees_the_bridge_loop_running(bridge: Bridge) -> None:
    # Under gevent, request greenlets share the hub's OS thread and see the bridge loop as their
    # running loop; the shortcut to an existing session must not hand it to them.
    bridge.run(_current_session(), timeout=10)
    errors: list[BaseException] = []

    def posing_as_the_loop() -> None:
        asyncio._set_running_loop(bridge.get_loop())
        try:
            ab_aiohttp.session()
        except BaseException as exc:
            errors.append(exc)
        finally:
            asyncio._set_running_loop(None)

    thread = threading.Thread(target=posing_as_the_loop)
    thread.start()
    thread.join(10)
    assert not thread.is_alive()
    assert len(errors) == 1 and isinstance(errors[0], AsyncBridgeError), errors


def test_one_session_per_loop_with_sane_defaults(bridge: Bridge) -> None:
    first = bridge.run(_current_session(), timeout=10)
    again = bridge.run(_current_session(), timeout=10)
    assert first is again
    assert first.timeout == aiohttp.ClientTimeout(total=30, connect=5)
    assert isinstance(first.connector, aiohttp.TCPConnector)
    assert first.connector.limit == 100
    assert first.connector.limit_per_host == 0
    other = Bridge()
    try:
        theirs = other.run(_current_session(), timeout=10)
        assert theirs is not first
    finally:
        assert other.shutdown(5).clean
        _retire(other)
    assert theirs.closed
    assert not first.closed


def test_forked_child_gets_its_own_session(sink: Sink, bridge: Bridge) -> None:
    parent_session = bridge.run(_current_session(), timeout=10)
    bridge.run(ab_aiohttp.post_json(sink.url, {"id": "parent"}), timeout=10)

    async def child_work() -> bool:
        mine = ab_aiohttp.session()
        await ab_aiohttp.post_json(sink.url, {"id": "child"})
        return mine is not parent_session and not mine.closed

    read_end, write_end = os.pipe()
    with warnings.catch_warnings():
        # The test process has threads (the sink, the parent's loop); Python 3.12+ warns.
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        code = 1
        try:
            os.close(read_end)
            ok = bridge.run(child_work(), timeout=10)
            report = bridge.shutdown(5)
            code = 0 if ok and report.clean and report.stats.completed == 1 else 2
            os.write(write_end, f"{ok} {report}".encode())
        finally:
            os._exit(code)
    os.close(write_end)
    code = wait_child(pid, 30)
    with os.fdopen(read_end, "rb") as pipe:
        said = pipe.read().decode()
    assert code == 0, said
    assert sink.ids == {"parent": 1, "child": 1}
    assert not parent_session.closed  # the child's shutdown closed only its own session


# -- closed at shutdown, after the drain -------------------------------------------------------


def test_session_closed_at_shutdown_after_pending_work_drained(sink: Sink) -> None:
    sink.delay = 0.2
    bridge = Bridge(max_concurrency=4)
    sessions: list[aiohttp.ClientSession] = []

    async def post(i: int) -> None:
        sessions.append(ab_aiohttp.session())
        await ab_aiohttp.post_json(sink.url, {"id": i})

    def work_and_shutdown() -> None:
        for i in range(12):
            assert bridge.run_soon(post(i))
        report = bridge.shutdown(10)
        # 12 posts at 4 at a time, 0.2 s each: the drain outlasts the first three rounds.
        assert report.clean, str(report)
        assert _outcomes(report.stats) == (12, 12, 0, 0, 0, 0, 0)

    assert _unclosed_warnings(work_and_shutdown) == []
    _retire(bridge)
    assert list(ab_aiohttp._sessions.values()) == []  # closed sessions are forgotten
    assert sink.received == 12
    assert len({id(s) for s in sessions}) == 1
    assert sessions[0].closed
    assert sessions[0].connector is None or sessions[0].connector.closed


def test_unclosed_warning_detector_sees_a_leaked_session() -> None:
    """The check above can fail: a session left open on a closed loop is reported."""

    def leak() -> None:
        async def make() -> aiohttp.ClientSession:
            return aiohttp.ClientSession()

        loop = asyncio.new_event_loop()
        loop.set_exception_handler(lambda loop, context: None)
        leaked: Any = loop.run_until_complete(make())
        loop.close()
        del leaked

    assert any("Unclosed client session" in m for m in _unclosed_warnings(leak))


# -- post_json ---------------------------------------------------------------------------------


def test_post_json_returns_the_decoded_json_answer(sink: Sink, bridge: Bridge) -> None:
    assert bridge.run(ab_aiohttp.post_json(sink.url, {"id": 1}), timeout=10) == {"ok": True}


async def _streamed_json(request: web.Request) -> web.StreamResponse:
    # The body comes in two writes 50 ms apart: it is not all in when the headers are.
    response = web.StreamResponse(headers={"Content-Type": "application/json"})
    await response.prepare(request)
    await response.write(b'{"ok": ')
    await asyncio.sleep(0.05)
    await response.write(b"true}")
    await response.write_eof()
    return response


def _answer(body: bytes, content_type: str) -> Any:
    async def handler(request: web.Request) -> web.Response:
        return web.Response(body=body, headers={"Content-Type": content_type})

    return handler


_ANSWERS: dict[str, tuple[bytes, str]] = {
    "/utf16": ('{"name": "café"}'.encode("utf-16"), "application/json; charset=utf-16"),
    "/unknown-charset": ('{"name": "café"}'.encode(), "application/json; charset=no-such"),
    "/problem": (b'{"title": "slow down"}', "application/problem+json"),
    "/empty": (b"", "application/json"),
    "/blank": (b"  \n", "application/json"),
    "/text": ("café".encode("latin-1"), "text/plain; charset=latin-1"),
    "/bad": (b'{"ok": ', "application/json"),
}


@pytest.fixture
def answers() -> Iterator[Sink]:
    """A sink with more answers than /notify's: see _ANSWERS and /streamed."""
    s = Sink()
    s.routes.append(("POST", "/streamed", _streamed_json))
    for path, (body, content_type) in _ANSWERS.items():
        s.routes.append(("POST", path, _answer(body, content_type)))
    with s:
        yield s


@pytest.mark.parametrize(
    ("path", "decoded"),
    [
        ("/streamed", {"ok": True}),
        ("/utf16", {"name": "café"}),
        ("/unknown-charset", {"name": "café"}),
        ("/problem", {"title": "slow down"}),
        ("/empty", None),
        ("/blank", None),
        ("/text", "café"),
    ],
)
def test_post_json_decodes_every_kind_of_answer(
    answers: Sink, bridge: Bridge, path: str, decoded: Any
) -> None:
    url = f"http://127.0.0.1:{answers.port}{path}"
    assert bridge.run(ab_aiohttp.post_json(url, {"id": 1}), timeout=10) == decoded


def test_post_json_answers_the_same_as_aiohttp_json_does(answers: Sink, bridge: Bridge) -> None:
    async def both(path: str) -> tuple[Any, Any]:
        url = f"http://127.0.0.1:{answers.port}{path}"
        async with ab_aiohttp.session().post(url, json={}) as response:
            theirs = await response.json(content_type=None)
        return await ab_aiohttp.post_json(url, {}), theirs

    for path in ("/streamed", "/utf16", "/problem", "/empty", "/blank"):
        ours, theirs = bridge.run(both(path), timeout=10)
        assert ours == theirs, path


def test_post_json_raises_on_a_json_answer_that_does_not_parse(
    answers: Sink, bridge: Bridge
) -> None:
    url = f"http://127.0.0.1:{answers.port}/bad"
    exc = bridge.submit(ab_aiohttp.post_json(url, {"id": 1})).exception(10)
    assert isinstance(exc, json.JSONDecodeError)
    # The connection went back to the pool clean: the next POST on it works.
    assert bridge.run(ab_aiohttp.post_json(answers.url, {"id": 2}), timeout=10) == {"ok": True}


@pytest.mark.parametrize("status", [404, 500])
def test_post_json_raises_on_error_status(sink: Sink, bridge: Bridge, status: int) -> None:
    sink.status = status
    future = bridge.submit(ab_aiohttp.post_json(sink.url, {"id": 1}))
    exc = future.exception(10)
    assert isinstance(exc, aiohttp.ClientResponseError)
    assert exc.status == status
    assert sink.requests == 1
    assert sink.received == 0
    assert _outcomes(bridge.stats()) == (1, 0, 1, 0, 0, 0, 0)


def test_post_json_failure_through_run_soon_is_counted_and_reported(
    sink: Sink, bridge: Bridge
) -> None:
    sink.status = 503
    seen: list[tuple[str, BaseException]] = []
    bridge.configure(on_error=lambda exc, name: seen.append((name, exc)))
    assert bridge.run_soon(ab_aiohttp.post_json(sink.url, {"id": 1}))
    assert bridge.drain(10)
    assert _outcomes(bridge.stats()) == (1, 0, 1, 0, 0, 0, 0)
    assert [name for name, _ in seen] == ["post_json"]
    assert isinstance(seen[0][1], aiohttp.ClientResponseError)
    assert seen[0][1].status == 503


# -- configure() -------------------------------------------------------------------------------


def test_configure_applies_to_sessions_created_afterwards(bridge: Bridge) -> None:
    timeout = aiohttp.ClientTimeout(total=3, connect=1)
    ab_aiohttp.configure(limit=7, limit_per_host=3, timeout=timeout, headers={"X-App": "t"})
    s = bridge.run(_current_session(), timeout=10)
    assert isinstance(s.connector, aiohttp.TCPConnector)
    assert (s.connector.limit, s.connector.limit_per_host) == (7, 3)
    assert s.timeout == timeout
    assert s.headers["X-App"] == "t"


def test_configured_timeout_is_enforced(sink: Sink, bridge: Bridge) -> None:
    sink.delay = 2.0
    ab_aiohttp.configure(timeout=aiohttp.ClientTimeout(total=0.2))
    exc = bridge.submit(ab_aiohttp.post_json(sink.url, {"id": 1})).exception(10)
    assert isinstance(exc, TimeoutError)
    assert sink.received == 0


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"limit": -1}, ValueError),
        ({"limit_per_host": -5}, ValueError),
        ({"timeout": 30}, TypeError),
        ({"limit": "5"}, TypeError),
        ({"limit": 2.5}, TypeError),
        ({"limit_per_host": True}, TypeError),
    ],
)
def test_configure_rejects_bad_values(kwargs: dict[str, Any], error: type[Exception]) -> None:
    with pytest.raises(error):
        ab_aiohttp.configure(**kwargs)


def test_post_json_sends_bytes_as_they_are(sink: Sink, bridge: Bridge) -> None:
    body = b'{"id": "pre-serialized",  "spacing": "kept"}'
    assert bridge.run(ab_aiohttp.post_json(sink.url, body), timeout=10) == {"ok": True}
    assert sink.ids == {"pre-serialized": 1}
