"""One destination down: gunicorn gthread workers hand each request's notification to two lanes.

The app is ``bench/lanes.py`` (the benchmark serves the same one). One lane posts to a healthy
sink (100 ms answers); the other, with ``asyncbridge.retrying``, to a broken server of this file
that answers 503 with ``Retry-After: 1`` for its first second and then hangs. The healthy lane
must deliver everything, as fast as if nothing were broken; the broken lane's notifications must
be retried within their budget and then counted as failed; and the logs must stay small.
"""

from __future__ import annotations

import asyncio
import collections
import json
import re
import signal
import statistics
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from tests.e2e.procs import PYTHON, ROOT, Server, free_port, http_get, wait_http
from tests.e2e.sink import Sink, wait_until

pytestmark = pytest.mark.e2e


class LatencySink(Sink):
    """tests/e2e/sink.py's Sink that also notes each notification's arrival latency.

    The payload carries ``t``, the sender's ``time.time()`` at the hand-off; the latency is the
    time from then to the sink's receipt, before its answer delay.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.latencies: dict[str, float] = {}

    async def _notify(self, request: web.Request) -> web.Response:
        body = await request.json()  # aiohttp keeps the body: the Sink reads it again
        with self._lock:
            self.latencies.setdefault(str(body.get("id")), time.time() - float(body["t"]))
        return await super()._notify(request)


class BrokenSink:
    """A destination going down: 503 with ``Retry-After`` for ``fail_for`` seconds, then it hangs.

    The clock starts at the first request. Every request is recorded with its id and arrival
    time; a hanging request is answered only when the server stops (or its sender gives up).
    """

    def __init__(self, *, fail_for: float = 1.0, retry_after: str = "1") -> None:
        self.fail_for = fail_for
        self.retry_after = retry_after
        self.arrivals: dict[str, list[float]] = collections.defaultdict(list)
        self.answered_503 = 0
        self.hung = 0
        self.port = 0
        self._first: float | None = None
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stop: asyncio.Event | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/notify"

    @property
    def requests(self) -> int:
        with self._lock:
            return sum(len(v) for v in self.arrivals.values())

    async def _notify(self, request: web.Request) -> web.Response:
        body = await request.json()
        now = time.monotonic()
        with self._lock:
            self.arrivals[str(body.get("id"))].append(now)
            if self._first is None:
                self._first = now
            failing = now - self._first < self.fail_for
            if failing:
                self.answered_503 += 1
            else:
                self.hung += 1
        if failing:
            return web.Response(status=503, headers={"Retry-After": self.retry_after})
        assert self._stop is not None
        await self._stop.wait()  # hangs until the server stops
        return web.Response(status=503)

    async def _serve(self, started: threading.Event) -> None:
        self._stop = asyncio.Event()
        app = web.Application()
        app.router.add_post("/notify", self._notify)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=1)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, backlog=1024)
        await site.start()
        server = site._server
        assert isinstance(server, asyncio.Server)
        self.port = server.sockets[0].getsockname()[1]
        started.set()
        try:
            await self._stop.wait()
        finally:
            await runner.cleanup()

    def start(self) -> BrokenSink:
        started = threading.Event()
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._thread = threading.Thread(
            target=lambda: loop.run_until_complete(self._serve(started)), name="broken", daemon=True
        )
        self._thread.start()
        if not started.wait(10):
            raise TimeoutError("the broken sink did not start within 10 s")
        return self

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None and self._thread.is_alive():
            stop = self._stop
            assert stop is not None
            self._loop.call_soon_threadsafe(stop.set)
            self._thread.join(10)
            self._loop.close()

    def __enter__(self) -> BrokenSink:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


CONF = """\
from asyncbridge.gunicorn import *
bind = "127.0.0.1:{port}"
workers = 2
worker_class = "gthread"
threads = 8
graceful_timeout = 20
timeout = 30
control_socket_disable = True
"""


def gunicorn_lanes(tmp_path: Path, env: dict[str, str]) -> tuple[Server, str, Path]:
    """gunicorn serving bench/lanes.py's app; returns (server, base url, stats directory)."""
    port = free_port()
    out = tmp_path / "stats"
    out.mkdir()
    conf = tmp_path / "gunicorn.conf.py"
    conf.write_text(CONF.format(port=port))
    full_env = {
        "PYTHONPATH": f"{ROOT}:{ROOT / 'bench'}",
        "LANES_OUT": str(out),
        **env,
    }
    server = Server(
        [PYTHON, "-m", "gunicorn", "-c", str(conf), "lanes:app"],
        log=tmp_path / "gunicorn.log",
        env=full_env,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_http(base + "/stats", 30, server.proc)
    except BaseException:
        server.stop()
        raise
    return server, base, out


def paced(url: str, n: int, rate: float) -> list[float]:
    """``n`` GETs at ``rate`` per second from a few threads; their latencies (all must be 200)."""
    latencies: list[float] = []
    lock = threading.Lock()
    start = time.monotonic()

    def one(i: int) -> None:
        delay = start + i / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        t0 = time.monotonic()
        status, _ = http_get(url, timeout=10)
        assert status == 200
        with lock:
            latencies.append(time.monotonic() - t0)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(one, range(n)))
    return latencies


def lanes_idle(base: str, lanes: tuple[str, ...]) -> bool:
    """Whether both workers have nothing pending or running in ``lanes`` (asked over /stats)."""
    idle: dict[int, bool] = {}
    for _ in range(50):  # each request lands on either worker
        _, body = http_get(base + "/stats", timeout=5)
        s = json.loads(body)
        idle[s["pid"]] = all(
            s["lanes"][lane]["pending"] + s["lanes"][lane]["running"] == 0
            for lane in lanes
            if lane in s["lanes"]
        )
        if len(idle) == 2:
            break
    return len(idle) == 2 and all(idle.values())


def _count(summary: str) -> str:
    found = re.search(r"failed ([\d,]+) times", summary)
    assert found is not None, summary
    return found[1].replace(",", "")


@pytest.fixture
def sinks() -> Iterator[tuple[LatencySink, BrokenSink]]:
    healthy = LatencySink(delay=0.1)
    healthy.start()
    try:
        with BrokenSink(fail_for=1.0) as broken:
            yield healthy, broken
    finally:
        healthy.stop()


BUDGET = 10.0  # the broken lane's retry budget in the next test


def test_one_destination_down_leaves_the_healthy_lane_alone(
    tmp_path: Path, sinks: tuple[LatencySink, BrokenSink]
) -> None:
    healthy, broken = sinks
    n = 120
    server, base, out = gunicorn_lanes(
        tmp_path,
        {
            "LANES_MODE": "lanes",
            "LANES_HEALTHY": healthy.url,
            "LANES_BROKEN": broken.url,
            "LANES_ATTEMPTS": "3",
            # 240 hung tries of 1 s against 32 slots queue for them: a try can wait seconds
            # for its slot, and one that gets it past the budget does not start (seen once with
            # 5 s: 239 retries of 240).
            "LANES_BUDGET": str(BUDGET),
            "LANES_TRY_TIMEOUT": "1.0",
            "ASYNCBRIDGE_LOG_INTERVAL": "2",
            "ASYNCBRIDGE_DRAIN_TIMEOUT": "8",
        },
    )
    try:
        latencies = paced(base + "/", n, rate=30)
        # Everything handed to the broken lane has tried its 3 times and failed.
        assert wait_until(lambda: lanes_idle(base, ("healthy", "broken")), 30, interval=0.2)
        server.signal(signal.SIGTERM)
        server.wait(30)
        log = server.output()
    finally:
        server.stop()
    stats = [json.loads(p.read_text()) for p in out.glob("*.json")]
    assert len(stats) == 2, log[-3000:]

    def total(lane: str, field: str) -> int:
        return sum(s["lanes"][lane][field] for s in stats if lane in s["lanes"])

    # The healthy lane: every notification arrived, once, fast.
    assert total("healthy", "accepted") == total("healthy", "completed") == n
    assert healthy.received == n and healthy.duplicates() == 0
    assert sorted(healthy.ids) == sorted(healthy.latencies)
    arrival = sorted(healthy.latencies.values())
    # The broken lane's hanging tries take 1 s each and its sleeps 1 s: a healthy notification held
    # up behind them would arrive seconds late. These arrive within a request's time.
    assert statistics.quantiles(arrival, n=100)[98] < 1.0, arrival[-10:]
    assert statistics.median(latencies) < 0.5
    # The broken lane: every notification tried 3 times (a 503 with Retry-After first, then
    # hanging tries cut at 1 s), inside its budget, then counted as failed.
    accepted = total("broken", "accepted")
    assert accepted == n
    assert total("broken", "failed") == accepted
    assert total("broken", "completed") == total("broken", "cancelled") == 0
    assert total("broken", "retries") == 2 * accepted
    assert broken.requests == 3 * accepted
    assert broken.answered_503 >= 1 and broken.hung >= 1
    spans = [max(ts) - min(ts) for ts in broken.arrivals.values()]
    assert len(spans) == n and max(spans) < BUDGET
    # The retries are counted in the totals too.
    assert sum(s["retries"] for s in stats) == 2 * accepted
    # The logs: at most one traceback per worker and exception type, and a summary line per
    # interval, instead of one traceback per failure.
    task_lines = [line for line in log.splitlines() if "asyncbridge task" in line]
    full = [line for line in task_lines if " times in the last " not in line]
    summaries = [line for line in task_lines if " times in the last " in line]
    assert 1 <= len(full) <= 2 * 3, task_lines  # per worker: 503, a timeout, maybe another kind
    assert 1 <= len(summaries) <= 2 * 8, task_lines
    assert all("in lane 'broken'" in line for line in task_lines)
    summarised = sum(int(_count(line)) for line in summaries)
    assert accepted - len(full) <= summarised <= accepted
    assert len(log.splitlines()) < 400, f"{len(log.splitlines())} log lines"
