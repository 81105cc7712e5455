"""Where should the bridge loop run in a gunicorn gevent worker? Measure both placements.

    .venv/bin/python bench/gevent_loop_placement.py [--requests N]

Placements:
    hub     the loop starts in post_worker_init, after gunicorn's monkey.patch_all(); its
            "thread" is a greenlet and it waits in gevent's selector (what asyncbridge.gunicorn
            does).
    thread  the loop starts in post_fork, before the patch, so it gets a real OS thread with a
            real epoll selector.

For each, one gevent worker serves this file's WSGI app and posts every request's notification to
a local aiohttp sink that answers after 100 ms. Printed per placement: request latency (median,
p99) under load, delivery (received/accepted), latency while a coroutine burns CPU for 300 ms
every 400 ms, and probes run inside the worker: ``asyncbridge.run()`` and
``submit(...).result()`` from a request, and a coroutine resolving "localhost" (which needs the
loop's default executor). Figures vary with the
machine; compare the rows, not the absolute numbers.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import asyncbridge  # noqa: E402

# -- the app, run inside gunicorn ------------------------------------------------------------------

_sessions: dict[int, Any] = {}


async def _notify(url: str, nid: int) -> None:
    import aiohttp

    # A session per loop, made here: asyncbridge.aiohttp.session() needs Bridge.current(), which
    # gevent's patched thread identity breaks in the "thread" placement (see the guide).
    loop = asyncio.get_running_loop()
    session = _sessions.get(id(loop))
    if session is None:
        session = _sessions[id(loop)] = aiohttp.ClientSession()
        try:
            asyncbridge.default_bridge().add_close_callback(session.close)
        except asyncbridge.AsyncBridgeError:
            pass  # the "thread" placement: the bridge no longer recognises its own thread
    async with session.post(url, json={"id": nid}) as response:
        response.raise_for_status()


async def _hog(seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass


async def _resolve() -> int:
    infos = await asyncio.get_running_loop().getaddrinfo("localhost", 80)
    return len(infos)


def _probe() -> dict[str, str]:
    out: dict[str, str] = {}
    try:
        asyncbridge.run(asyncio.sleep(0), timeout=2)
        out["run"] = "ok"
    except Exception as exc:
        out["run"] = type(exc).__name__
    try:
        asyncbridge.submit(asyncio.sleep(0.01, "ok")).result(2)
        out["submit"] = "ok"
    except Exception as exc:
        out["submit"] = type(exc).__name__
    future = asyncbridge.submit(asyncio.wait_for(_resolve(), 2))
    try:
        future.result(3)
        out["resolve"] = "ok"
    except Exception as exc:
        out["resolve"] = type(exc).__name__ or "error"
    return out


_count = 0


def app(environ: dict[str, Any], start_response: Callable[..., object]) -> Iterable[bytes]:
    """The bench's WSGI app: ``/`` notifies, ``/hog`` burns CPU on the loop, ``/probe``."""
    global _count
    path = environ.get("PATH_INFO")
    if path == "/hog":
        asyncbridge.run_soon(_hog(0.3))
        body = b"hog"
    elif path == "/probe":
        body = json.dumps(_probe()).encode()
    elif path == "/stats":
        s = asyncbridge.stats()
        body = json.dumps({"accepted": s.accepted, "completed": s.completed}).encode()
    else:
        _count += 1
        asyncbridge.run_soon(_notify(os.environ["BENCH_SINK"], _count))
        body = b"ok"
    start_response("200 OK", [("Content-Length", str(len(body)))])
    return [body]


HOG_SECONDS = 3.0

CONF = """\
import asyncbridge
from asyncbridge.gunicorn import post_fork, post_worker_init, worker_exit, worker_int
if {placement!r} == "thread":
    def post_fork(server, worker):
        asyncbridge.start()  # before gevent's monkey.patch_all(): a real OS thread
bind = "127.0.0.1:{port}"
workers = 1
worker_class = "gevent"
loglevel = "warning"
control_socket_disable = True
"""

# -- the driver --------------------------------------------------------------------------------


def _get(url: str) -> tuple[float, bytes]:
    import urllib.request

    started = time.monotonic()
    with urllib.request.urlopen(url, timeout=10) as response:
        body = response.read()
    return time.monotonic() - started, body


def _latencies(url: str, n: int, clients: int) -> list[float]:
    with ThreadPoolExecutor(clients) as pool:
        return [t for t, _ in pool.map(lambda _: _get(url), range(n))]


def _for(url: str, seconds: float, clients: int) -> list[float]:
    """Latencies of back-to-back requests by ``clients`` clients for ``seconds``."""
    end = time.monotonic() + seconds
    found: list[float] = []

    def client() -> None:
        while time.monotonic() < end:
            found.append(_get(url)[0])

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + 15)
    return found


def _ms(values: list[float], q: float) -> str:
    ordered = sorted(values)
    return f"{ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000:.1f}"


def measure(placement: str, n: int) -> dict[str, str]:
    from tests.e2e.procs import PYTHON, free_port, running, wait_http
    from tests.e2e.sink import Sink, wait_until

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory() as tmp, Sink(delay=0.1) as sink:
        conf = Path(tmp, "conf.py")
        conf.write_text(CONF.format(placement=placement, port=port))
        argv = [PYTHON, "-m", "gunicorn", "-c", str(conf), "bench.gevent_loop_placement:app"]
        env = {"BENCH_SINK": sink.url}
        with running(argv, log=Path(tmp, "log"), env=env) as server:
            wait_http(base + "/stats", 30, server.proc)
            _latencies(base + "/", 50, 4)  # warm-up
            plain = _latencies(base + "/", n, 8)
            stop = threading.Event()

            def hogs() -> None:
                while not stop.wait(0.4):
                    _get(base + "/hog")

            hogger = threading.Thread(target=hogs)
            hogger.start()
            try:
                time.sleep(0.5)
                hogged = _for(base + "/", HOG_SECONDS, 2)
            finally:
                stop.set()
                hogger.join(10)
            notified = n + 50 + len(hogged)
            # Probe once the backlog has drained: run() waits its turn behind queued notifications.
            wait_until(lambda: sink.received >= notified, 10)
            probe = json.loads(_get(base + "/probe")[1])
            server.signal(signal.SIGTERM)
            server.wait(30)
        return {
            "placement": placement,
            "p50 ms": _ms(plain, 0.5),
            "p99 ms": _ms(plain, 0.99),
            "delivered": f"{sink.received}/{notified}",
            "hog: req/s": f"{len(hogged) / HOG_SECONDS:.0f}",
            "hog p50 ms": _ms(hogged, 0.5),
            "hog p90 ms": _ms(hogged, 0.9),
            "hog max ms": f"{max(hogged) * 1000:.1f}",
            "run() in request": probe["run"],
            "submit().result()": probe["submit"],
            "resolve localhost": probe["resolve"],
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    rows = [measure(p, args.requests) for _ in range(args.rounds) for p in ("hub", "thread")]
    columns = list(rows[0])
    widths = {c: max(len(c), *(len(r[c]) for r in rows)) for c in columns}
    print(" | ".join(c.ljust(widths[c]) for c in columns))
    print("-+-".join("-" * widths[c] for c in columns))
    for row in rows:
        print(" | ".join(row[c].ljust(widths[c]) for c in columns))


if __name__ == "__main__":
    main()
