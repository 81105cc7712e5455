"""post_json's answers, hostile ones included, against what aiohttp's response.json() gives.

Before 1f8058a, post_json decoded a JSON answer with ``await response.json()``; since then it takes
a body that is all in with ``read_nowait()`` and decodes it itself. Every case here runs both ways
on one session: ``post_json`` and ``_as_before`` (the old code, kept below as the oracle), and
asserts the exact result or exception type of each, then that the pool still serves a following
POST. The answers come from a raw asyncio server on 127.0.0.1 (byte for byte what the test wrote:
wrong lengths, cut bodies, odd charsets) and from the aiohttp sink (its own compression and
chunking).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gzip
import importlib
import json
import socket
import threading
import types
import zlib
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.compression_utils import HAS_BROTLI

import asyncbridge.aiohttp as ab_aiohttp
from asyncbridge import Bridge

from .e2e.sink import Sink, wait_until
from .helpers import aiohttp_defaults

pytestmark = pytest.mark.timeout(60)

Call = Callable[..., Coroutine[Any, Any, Any]]
Outcome = tuple[str, Any]  # ("value", the result) or ("raises", the exception's exact type)


async def _as_before(url: str, payload: Any, **kwargs: Any) -> Any:
    """post_json as it was before 1f8058a: aiohttp's own ``json()`` (or ``text()``)."""
    if isinstance(payload, bytes):
        headers = {"Content-Type": "application/json", **kwargs.pop("headers", {})}
        request = ab_aiohttp.session().post(url, data=payload, headers=headers, **kwargs)
    else:
        request = ab_aiohttp.session().post(url, json=payload, **kwargs)
    async with request as response:
        response.raise_for_status()
        content_type = response.content_type
        if content_type == "application/json" or content_type.endswith("+json"):
            return await response.json()
        return await response.text()


CALLS = pytest.mark.parametrize(
    "call", [ab_aiohttp.post_json, _as_before], ids=["post_json", "response.json"]
)


async def _outcome(call: Awaitable[Any]) -> Outcome:
    try:
        return ("value", await call)
    except Exception as exc:
        return ("raises", type(exc))


_default_settings = pytest.fixture(autouse=True)(aiohttp_defaults)


@pytest.fixture
def bridge() -> Iterator[Bridge]:
    b = Bridge(max_concurrency=32)
    yield b
    b.shutdown(5)


# -- a raw HTTP/1.1 server ---------------------------------------------------------------------


@dataclasses.dataclass
class _Exchange:
    """One request as the raw server saw it; a handler answers it through ``writer``."""

    path: str
    length: int  # the request's Content-Length
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    body: bytes = b""

    async def read_body(self) -> bytes:
        self.body = await self.reader.readexactly(self.length)
        return self.body


# A handler answers one exchange and says whether to keep the connection for another request.
Handler = Callable[[_Exchange], Awaitable[bool]]


class _RawServer:
    """HTTP/1.1 on 127.0.0.1 answering each path with exactly the bytes its handler writes.

    Runs its own loop in a thread. Its listening socket has a small receive buffer so that a big
    request body cannot all sit in the kernel while a handler has not read it.
    """

    def __init__(self, handlers: dict[str, Handler]) -> None:
        self.handlers = handlers
        self.port = 0
        self.connections = 0  # TCP connections accepted
        self.exchanges: list[tuple[str, int]] = []  # (path, request body bytes read), in order
        self.ended_by_client = 0  # connections the client closed between two requests
        self.stalled = threading.Event()  # set by the /stall handler once it has stopped writing
        self.abandoned = 0  # stalled answers whose client went away
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def counts(self) -> tuple[int, list[tuple[str, int]], int]:
        with self._lock:
            return self.connections, list(self.exchanges), self.ended_by_client

    def __enter__(self) -> _RawServer:
        started = threading.Event()

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
            sock.bind(("127.0.0.1", 0))
            server = loop.run_until_complete(asyncio.start_server(self._serve, sock=sock))
            self.port = sock.getsockname()[1]
            started.set()
            loop.run_forever()

            async def stop() -> None:
                server.close()
                tasks = asyncio.all_tasks() - {asyncio.current_task()}
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                await server.wait_closed()

            try:
                loop.run_until_complete(stop())
            finally:
                loop.close()

        self._thread = threading.Thread(target=run, name="raw-server", daemon=True)
        self._thread.start()
        if not started.wait(10):
            raise TimeoutError("the raw server did not start within 10 s")
        return self

    def __exit__(self, *exc_info: object) -> None:
        assert self._loop is not None and self._thread is not None
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        assert not self._thread.is_alive(), "the raw server did not stop within 10 s"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with self._lock:
            self.connections += 1
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    with self._lock:
                        self.ended_by_client += 1
                    return
                request_line, *header_lines = head.decode("latin-1").split("\r\n")
                exchange = _Exchange(request_line.split(" ")[1], 0, reader, writer)
                for line in header_lines:
                    name, _, value = line.partition(":")
                    if name.strip().lower() == "content-length":
                        exchange.length = int(value)
                keep = await self.handlers[exchange.path](exchange)
                with self._lock:
                    self.exchanges.append((exchange.path, len(exchange.body)))
                if not keep:
                    return
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            return  # cancelled: the server is stopping
        finally:
            writer.close()
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await writer.wait_closed()


def _http(
    body: bytes,
    content_type: str | None = "application/json",
    *,
    status: str = "200 OK",
    headers: tuple[str, ...] = (),
    length: int | None = None,
) -> bytes:
    """An answer's bytes; ``length`` -1 sends no Content-Length, None the body's true length."""
    lines = [f"HTTP/1.1 {status}"]
    if content_type is not None:
        lines.append(f"Content-Type: {content_type}")
    lines.extend(headers)
    length = len(body) if length is None else length
    if length >= 0:
        lines.append(f"Content-Length: {length}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def _chunks(*parts: bytes, last: bool = True) -> bytes:
    data = b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in parts)
    return data + (b"0\r\n\r\n" if last else b"")


def _writes(*pieces: bytes, pause: float = 0.05, keep: bool = True) -> Handler:
    """Read the request, then write ``pieces`` ``pause`` seconds apart (then close unless keep)."""

    async def handle(exchange: _Exchange) -> bool:
        await exchange.read_body()
        for i, piece in enumerate(pieces):
            if i:
                await asyncio.sleep(pause)
            exchange.writer.write(piece)
            await exchange.writer.drain()
        return keep

    return handle


async def _echo(exchange: _Exchange) -> bool:
    """Answer {"id": <the request's id>}, the body in two writes 20 ms apart for odd ids."""
    ident = json.loads(await exchange.read_body())["id"]
    body = json.dumps({"id": ident}).encode()
    if ident % 2:
        exchange.writer.write(_http(body)[:-3])
        await exchange.writer.drain()
        await asyncio.sleep(0.02)
        exchange.writer.write(body[-3:])
    else:
        exchange.writer.write(_http(body))
    await exchange.writer.drain()
    return True


async def _answer_first(exchange: _Exchange) -> bool:
    """Answer at once, then read the request body 0.3 s later (as a server that streams it)."""
    exchange.writer.write(_http(b'{"early": true}'))
    await exchange.writer.drain()
    await asyncio.sleep(0.3)
    await exchange.read_body()
    return True


def _stall(server: list[_RawServer]) -> Handler:
    """Send the head and half the body, then wait for the client to go away."""

    async def handle(exchange: _Exchange) -> bool:
        await exchange.read_body()
        exchange.writer.write(_http(b'{"half":', length=20))
        await exchange.writer.drain()
        server[0].stalled.set()
        await exchange.reader.read()  # b"" once the client closes
        with server[0]._lock:
            server[0].abandoned += 1
        return False

    return handle


VALUE = {"name": "café", "n": [1, 2.5, None, True]}
TEXT = json.dumps(VALUE, ensure_ascii=False)
BOM = b"\xef\xbb\xbf"
BIG = list(range(300_000))  # about 2 MB of JSON: more than a read buffer, many TCP segments
RFC2231 = "application/json; charset*=utf-8''utf-16"

_ANSWERS: dict[str, Handler] = {
    "/ok": _writes(_http(b'{"ok": true}')),
    "/echo": _echo,
    "/early": _answer_first,
    "/plain": _writes(_http(TEXT.encode())),
    "/upper": _writes(_http(TEXT.encode(), "APPLICATION/JSON; CHARSET=UTF-8")),
    "/quoted": _writes(_http(TEXT.encode(), 'application/json; charset="utf-8"')),
    "/latin1": _writes(_http(TEXT.encode("latin-1"), "application/json; charset=latin-1")),
    "/utf16-bom": _writes(_http(TEXT.encode("utf-16"), "application/json; charset=utf-16")),
    "/utf16-le-no-bom": _writes(
        _http(TEXT.encode("utf-16-le"), "application/json; charset=utf-16")
    ),
    "/utf16-be-no-bom": _writes(
        _http(TEXT.encode("utf-16-be"), "application/json; charset=utf-16")
    ),
    "/unknown-charset": _writes(_http(TEXT.encode(), "application/json; charset=no-such")),
    "/bom-with-charset": _writes(_http(BOM + TEXT.encode(), "application/json; charset=utf-8")),
    "/problem": _writes(_http(TEXT.encode(), "application/problem+json")),
    "/problem-unknown-charset": _writes(
        _http(TEXT.encode(), "application/problem+json; charset=no-such")
    ),
    "/vnd": _writes(_http(TEXT.encode(), "application/vnd.api+json; charset=utf-8")),
    "/empty": _writes(_http(b"")),
    "/blank": _writes(_http(b" \r\n\t ")),
    "/vt-ff-only": _writes(_http(b"\x0b\x0c")),
    "/204": _writes(_http(b"", status="204 No Content", length=-1)),
    "/205": _writes(_http(b"", status="205 Reset Content")),
    "/gzip": _writes(_http(gzip.compress(TEXT.encode()), headers=("Content-Encoding: gzip",))),
    "/deflate": _writes(
        _http(zlib.compress(TEXT.encode()), headers=("Content-Encoding: deflate",))
    ),
    "/bad-gzip": _writes(_http(b"not gzip at all", headers=("Content-Encoding: gzip",))),
    "/chunked": _writes(
        _http(
            _chunks(TEXT.encode()[:7], TEXT.encode()[7:]),
            headers=("Transfer-Encoding: chunked",),
            length=-1,
        )
    ),
    "/chunked-pieces": _writes(
        _http(b"", headers=("Transfer-Encoding: chunked",), length=-1),
        _chunks(TEXT.encode()[:7], last=False),
        _chunks(TEXT.encode()[7:]),
    ),
    "/chunked-gzip": _writes(
        _http(
            _chunks(gzip.compress(TEXT.encode())),
            headers=("Content-Encoding: gzip", "Transfer-Encoding: chunked"),
            length=-1,
        )
    ),
    "/pieces": _writes(
        _http(TEXT.encode(), length=len(TEXT.encode()))[:-20],
        TEXT.encode()[-20:-5],
        TEXT.encode()[-5:],
    ),
    "/big": _writes(_http(json.dumps(BIG).encode())),
    "/big-gzip": _writes(
        _http(gzip.compress(json.dumps(BIG).encode()), headers=("Content-Encoding: gzip",))
    ),
    "/until-close": _writes(
        _http(TEXT.encode()[:9], headers=("Connection: close",), length=-1),
        TEXT.encode()[9:],
        keep=False,
    ),
    "/cut-short": _writes(_http(TEXT.encode(), length=len(TEXT.encode()) + 10), keep=False),
    "/cut-chunked": _writes(
        _http(b"", headers=("Transfer-Encoding: chunked",), length=-1),
        b"%x\r\n%s" % (len(TEXT.encode()), TEXT.encode()[:9]),
        keep=False,
    ),
    "/length-short": _writes(_http(TEXT.encode() + b"garbage", length=len(TEXT.encode()))),
    "/bad-json": _writes(_http(b'{"name": ')),
    "/invalid-utf8": _writes(_http(TEXT.encode("latin-1"))),
    "/text": _writes(_http("café".encode("latin-1"), "text/plain; charset=latin-1")),
    "/no-content-type": _writes(_http(TEXT.encode(), None)),
    "/500": _writes(_http(b'{"error": 1}', status="500 Internal Server Error")),
    # Answers that 1f8058a decoded differently from response.json().
    "/bom-no-charset": _writes(_http(BOM + TEXT.encode())),
    "/utf16-no-charset": _writes(_http(TEXT.encode("utf-16"))),
    "/utf16-unknown-charset": _writes(
        _http(TEXT.encode("utf-16"), "application/json; charset=no-such")
    ),
    "/utf32-no-charset": _writes(_http(TEXT.encode("utf-32"))),
    "/utf16-le-no-charset": _writes(_http(TEXT.encode("utf-16-le"))),
    "/lone-surrogate": _writes(_http(b'["\xed\xa0\x80"]')),
    "/vt-ff-around": _writes(_http(b"\x0c" + TEXT.encode() + b"\x0b")),
    "/utf16-be-newline": _writes(
        _http((TEXT + "\n").encode("utf-16-be"), "application/json; charset=utf-16-be")
    ),
    "/base64-charset": _writes(_http(TEXT.encode(), "application/json; charset=base64")),
    "/rfc2231-charset": _writes(_http(TEXT.encode("utf-16"), RFC2231)),
    "/problem-latin1": _writes(_http(TEXT.encode("latin-1"), "application/problem+json")),
    "/gltf": _writes(_http(TEXT.encode(), "model/gltf+json")),
}


@pytest.fixture
def raw() -> Iterator[_RawServer]:
    handlers = dict(_ANSWERS)
    holder: list[_RawServer] = []
    handlers["/stall"] = _stall(holder)
    with _RawServer(handlers) as server:
        holder.append(server)
        yield server


def _value(value: Any) -> Outcome:
    return ("value", value)


def _raises(error: type[BaseException]) -> Outcome:
    return ("raises", error)


_SAME: list[tuple[str, Outcome]] = [
    ("/plain", _value(VALUE)),
    ("/upper", _value(VALUE)),
    ("/quoted", _value(VALUE)),
    ("/latin1", _value(VALUE)),
    ("/utf16-bom", _value(VALUE)),
    ("/utf16-le-no-bom", _value(VALUE)),  # Python's utf-16 without a BOM is little-endian
    ("/utf16-be-no-bom", _raises(json.JSONDecodeError)),
    ("/unknown-charset", _value(VALUE)),
    ("/bom-with-charset", _raises(json.JSONDecodeError)),
    ("/problem", _value(VALUE)),
    ("/problem-unknown-charset", _value(VALUE)),
    ("/vnd", _value(VALUE)),
    ("/empty", _value(None)),
    ("/blank", _value(None)),
    ("/vt-ff-only", _value(None)),
    ("/204", _value(None)),
    ("/205", _value(None)),
    ("/gzip", _value(VALUE)),
    ("/deflate", _value(VALUE)),
    ("/bad-gzip", _raises(aiohttp.ClientPayloadError)),
    ("/chunked", _value(VALUE)),
    ("/chunked-pieces", _value(VALUE)),
    ("/chunked-gzip", _value(VALUE)),
    ("/pieces", _value(VALUE)),
    ("/big", _value(BIG)),
    ("/big-gzip", _value(BIG)),
    ("/until-close", _value(VALUE)),
    ("/cut-short", _raises(aiohttp.ClientPayloadError)),
    ("/cut-chunked", _raises(aiohttp.ClientPayloadError)),
    ("/length-short", _raises(aiohttp.ClientResponseError)),  # aiohttp's parser: data after it
    ("/bad-json", _raises(json.JSONDecodeError)),
    ("/invalid-utf8", _raises(UnicodeDecodeError)),
    ("/text", _value("café")),
    ("/no-content-type", _value(TEXT)),
    ("/500", _raises(aiohttp.ClientResponseError)),
]

# What response.json() does with these, and 1f8058a did not (it let json.loads guess UTF-8/16/32
# from the bytes, with surrogatepass, did not strip bytes before decoding, read the charset with
# the email parser, and fell back on LookupError where aiohttp raises it).
_DIFFERED: list[tuple[str, Outcome]] = [
    ("/bom-no-charset", _raises(json.JSONDecodeError)),
    ("/utf16-no-charset", _raises(UnicodeDecodeError)),
    ("/utf16-unknown-charset", _raises(UnicodeDecodeError)),
    ("/utf32-no-charset", _raises(UnicodeDecodeError)),
    ("/utf16-le-no-charset", _raises(UnicodeDecodeError)),
    ("/lone-surrogate", _raises(UnicodeDecodeError)),
    ("/vt-ff-around", _value(VALUE)),
    ("/utf16-be-newline", _raises(UnicodeDecodeError)),
    ("/base64-charset", _raises(LookupError)),
    ("/rfc2231-charset", _raises(UnicodeDecodeError)),
]


@pytest.mark.parametrize(
    ("path", "expected"), _SAME + _DIFFERED, ids=[p for p, _ in _SAME + _DIFFERED]
)
def test_post_json_answers_every_kind_of_answer_as_response_json_did(
    raw: _RawServer, bridge: Bridge, path: str, expected: Outcome
) -> None:
    async def both() -> tuple[Outcome, Any, Outcome, Any]:
        ours = await _outcome(ab_aiohttp.post_json(raw.url(path), {"id": 1}))
        ours_next = await ab_aiohttp.post_json(raw.url("/ok"), {"id": 2})
        before = await _outcome(_as_before(raw.url(path), {"id": 1}))
        before_next = await ab_aiohttp.post_json(raw.url("/ok"), {"id": 2})
        return ours, ours_next, before, before_next

    ours, ours_next, before, before_next = bridge.run(both(), timeout=30)
    assert before == expected  # the oracle: aiohttp's json() really does this
    assert ours == expected
    # The pool served the next POST on the same session, with its own answer.
    assert ours_next == before_next == {"ok": True}


@CALLS
def test_a_session_fallback_charset_resolver_decodes_a_json_answer_without_charset(
    raw: _RawServer, bridge: Bridge, call: Call
) -> None:
    ab_aiohttp.configure(fallback_charset_resolver=lambda response, body: "latin-1")
    assert bridge.run(call(raw.url("/problem-latin1"), {"id": 1}), timeout=10) == VALUE


@CALLS
def test_a_trace_config_sees_the_answer_body_once(
    raw: _RawServer, bridge: Bridge, call: Call
) -> None:
    chunks: list[bytes] = []

    async def on_chunk(
        session: aiohttp.ClientSession,
        ctx: types.SimpleNamespace,
        params: aiohttp.TraceResponseChunkReceivedParams,
    ) -> None:
        chunks.append(params.chunk)

    trace = aiohttp.TraceConfig()
    trace.on_response_chunk_received.append(on_chunk)
    ab_aiohttp.configure(trace_configs=[trace])
    assert bridge.run(call(raw.url("/ok"), {"id": 1}), timeout=10) == {"ok": True}
    assert chunks == [b'{"ok": true}']


def test_a_non_application_json_suffix_type_is_decoded_as_documented(
    raw: _RawServer, bridge: Bridge
) -> None:
    # post_json's docstring promises JSON for "any +json type"; aiohttp's json() refused
    # model/gltf+json (its check wants application/...). 1f8058a decodes it, as documented.
    async def both() -> tuple[Outcome, Outcome]:
        ours = await _outcome(ab_aiohttp.post_json(raw.url("/gltf"), {"id": 1}))
        return ours, await _outcome(_as_before(raw.url("/gltf"), {"id": 1}))

    assert bridge.run(both(), timeout=10) == (
        _value(VALUE),
        _raises(aiohttp.ContentTypeError),
    )


@CALLS
@pytest.mark.filterwarnings("ignore:Sending a large body directly:ResourceWarning")
def test_an_answer_sent_before_the_request_body_was_read_still_gets_the_whole_body_up(
    raw: _RawServer, bridge: Bridge, call: Call
) -> None:
    # 8 MB cannot sit in the kernel: the upload is still going when the whole answer is in.
    # aiohttp itself stops waiting for it then (it cancels the upload task on the answer's
    # end, in both ways): the bytes already handed to the transport are still flushed before
    # the connection closes, and the next POST gets a new connection.
    payload = b'"' + b"x" * (8 << 20) + b'"'

    async def go() -> tuple[Any, Any]:
        first = await call(raw.url("/early"), payload)
        return first, await call(raw.url("/ok"), {"id": 2})

    assert bridge.run(go(), timeout=30) == ({"early": True}, {"ok": True})
    assert wait_until(lambda: len(raw.counts()[1]) == 2, 10)
    connections, exchanges, ended_by_client = raw.counts()
    assert (connections, sorted(exchanges), ended_by_client) == (
        2,
        [("/early", len(payload)), ("/ok", len(b'{"id": 2}'))],
        1,
    )


@CALLS
def test_concurrent_posts_on_one_pooled_connection_get_their_own_answers(
    raw: _RawServer, bridge: Bridge, call: Call
) -> None:
    ab_aiohttp.configure(limit=1)

    async def go() -> list[Any]:
        return list(await asyncio.gather(*(call(raw.url("/echo"), {"id": i}) for i in range(30))))

    assert bridge.run(go(), timeout=30) == [{"id": i} for i in range(30)]
    # the server counts an exchange after its last write drains, which can be after the answer is in
    assert wait_until(lambda: len(raw.counts()[1]) >= 30, 10)
    connections, exchanges, _ = raw.counts()
    assert (connections, len(exchanges)) == (1, 30)


@CALLS
def test_a_cancel_while_the_body_is_read_closes_that_connection_only(
    raw: _RawServer, bridge: Bridge, call: Call
) -> None:
    async def go() -> tuple[bool, Any]:
        task = asyncio.ensure_future(call(raw.url("/stall"), {"id": 1}))
        assert await asyncio.to_thread(raw.stalled.wait, 10)
        await asyncio.sleep(0.05)  # the head and half the body are in
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            cancelled = True
        else:
            cancelled = False
        return cancelled, await ab_aiohttp.post_json(raw.url("/ok"), {"id": 2})

    assert bridge.run(go(), timeout=20) == (True, {"ok": True})
    assert wait_until(lambda: raw.abandoned == 1, 5)
    # the server counts /ok after its write drains, which can be after the client has the answer
    assert wait_until(lambda: len(raw.counts()[1]) >= 2, 10)
    connections, exchanges, ended_by_client = raw.counts()
    assert (connections, sorted(exchanges), ended_by_client) == (
        2,
        [("/ok", len(b'{"id": 2}')), ("/stall", len(b'{"id": 1}'))],
        0,
    )


@CALLS
def test_a_timeout_while_the_body_is_read_raises_and_leaves_the_pool_usable(
    raw: _RawServer, bridge: Bridge, call: Call
) -> None:
    async def go() -> tuple[Outcome, Outcome, Any]:
        waited = await _outcome(asyncio.wait_for(call(raw.url("/stall"), {"id": 1}), 0.3))
        bounded = await _outcome(
            call(raw.url("/stall"), {"id": 1}, timeout=aiohttp.ClientTimeout(total=0.3))
        )
        return waited, bounded, await ab_aiohttp.post_json(raw.url("/ok"), {"id": 2})

    assert bridge.run(go(), timeout=20) == (
        _raises(TimeoutError),
        _raises(TimeoutError),
        {"ok": True},
    )
    assert wait_until(lambda: raw.abandoned == 2, 5)
    assert raw.counts()[0] == 3


# -- the aiohttp sink's own compression and chunking -------------------------------------------


def _compressed(
    coding: web.ContentCoding, chunked: bool
) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def handler(request: web.Request) -> web.StreamResponse:
        await request.read()
        response = web.json_response(VALUE)
        response.enable_compression(coding)
        if chunked:
            response.enable_chunked_encoding()
        return response

    return handler


@pytest.fixture
def compressing() -> Iterator[Sink]:
    s = Sink()
    for coding in (web.ContentCoding.gzip, web.ContentCoding.deflate):
        for chunked in (False, True):
            path = f"/{coding.value}{'-chunked' if chunked else ''}"
            s.routes.append(("POST", path, _compressed(coding, chunked)))
    with s:
        yield s


@pytest.mark.parametrize("coding", ["gzip", "deflate"])
@pytest.mark.parametrize("chunked", [False, True], ids=["length", "chunked"])
def test_a_compressed_json_answer_from_aiohttp_is_decoded(
    compressing: Sink, bridge: Bridge, coding: str, chunked: bool
) -> None:
    url = f"http://127.0.0.1:{compressing.port}/{coding}{'-chunked' if chunked else ''}"

    async def both() -> tuple[Any, Any, str]:
        async with ab_aiohttp.session().post(url, json={}) as response:
            encoding = response.headers.get("Content-Encoding", "")
            await response.read()
        return await ab_aiohttp.post_json(url, {}), await _as_before(url, {}), encoding

    assert bridge.run(both(), timeout=10) == (VALUE, VALUE, coding)


@CALLS
def test_a_brotli_answer_is_decoded(raw: _RawServer, bridge: Bridge, call: Call) -> None:
    # aiohttp's server cannot send br (no ContentCoding.br); the raw server sends bytes that the
    # brotli package compressed, which aiohttp decodes only with brotli or brotlicffi installed.
    if not HAS_BROTLI:
        pytest.skip(
            "neither brotli nor brotlicffi is installed (aiohttp[speedups]): no br answer can be "
            "made or decoded here"
        )
    brotli = importlib.import_module("brotli")
    raw.handlers["/br"] = _writes(
        _http(brotli.compress(TEXT.encode()), headers=("Content-Encoding: br",))
    )
    assert bridge.run(call(raw.url("/br"), {"id": 1}), timeout=10) == VALUE
