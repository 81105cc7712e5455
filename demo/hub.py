"""A local stand-in for a hosted push service, and the live dashboard it serves.

Endpoints:

- ``POST /events``: a JSON event ``{"id": ..., "path": ..., "at": ...}`` signed with the shared
  secret (see :mod:`demo.signing`). Unsigned or badly signed events get 401; accepted ones are
  counted and fanned out to every browser listening, but only if their sender is still connected
  when the answer goes out: the others (a worker killed, or its push cancelled at its drain
  deadline, while the hub held it) are counted as ``abandoned``. ``at`` is the app's hand-off
  time: the hub plots the arrival delay from it.
- ``POST /metrics``: the app's request timings, signed the same way (see :mod:`demo.metrics`).
- ``GET /stream``: Server-Sent Events. First a ``snapshot`` with the counts, the latest hits, the
  current rate, the mode and the graph so far; then a ``hit`` per accepted event, a ``tick`` per
  second (one point of the graph) and a ``mode`` when the switch is flipped. With a status
  directory (``--status-dir``), the snapshot also has ``loops``, each gunicorn worker's
  asyncbridge figures (see :mod:`demo.loops`), and a ``loops`` event follows each change.
- ``GET /api/counts``, ``GET /api/series``: the counts and the graph's points as JSON;
  ``GET /api/loops``: the workers' figures (404 without a status directory).
- ``GET /api/mode``, ``POST /api/mode`` with ``{"mode": "inline"}`` or ``{"mode": "asyncbridge"}``:
  how the app pushes (see :mod:`demo.mode`).
- ``GET /``: the dashboard page (``demo/static/``).

Run alone with ``python -m demo.hub --port 8001``; :mod:`demo.run` starts it for you.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import logging
import math
import os
import signal
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from . import loops
from .mode import DEFAULT, MODES, ModeFile
from .signing import SIGNATURE_HEADER, load_secret, verify

__all__ = ["Hub", "main", "make_app"]

logger = logging.getLogger("demo.hub")

STATIC = Path(__file__).resolve().parent / "static"
_MAX_BODY = 1024 * 1024  # a metrics report of a busy worker; events are far smaller
_SUBSCRIBER_BACKLOG = 1000
_RECENT_IDS = 100_000
_RECENT_HITS = 12
_RATE_WINDOW_S = 10.0
_SERIES_POINTS = 300
# A second is plotted this long after it ends: the app reports its timings every 0.5 s.
_SERIES_LAG_S = 2
_KEEPALIVE_S = 15.0
_LOOPS_EVERY_S = 0.5
_MAX_SENDERS = 10_000  # workers the per-worker counts remember (a long run recycles many)
_CLOSE = None  # put in a subscriber's queue to end its stream

_Message = tuple[str, dict[str, Any]]


@dataclass
class _Second:
    """What happened in one wall-clock second: request times, arrival delays (ms)."""

    requests: list[float] = field(default_factory=list)
    modes: set[str] = field(default_factory=set)
    arrivals: list[float] = field(default_factory=list)


def _percentile(values: list[float], q: float) -> float | None:
    """The nearest-rank ``q`` percentile (0 < q <= 100), or None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)], 3)


class Hub:
    """Counts signed events, keeps the graph's points and fans both out to subscribers.

    Args:
        secret: The shared secret events and reports must be signed with.
        delay: Seconds to wait before accepting each event (a slow push service).
        mode: Where the app's push mode is kept.
        status_dir: Where the gunicorn workers publish their asyncbridge figures, to show them;
            None: no ``loops`` figures.
    """

    def __init__(
        self,
        secret: bytes,
        *,
        delay: float = 0.0,
        mode: ModeFile | None = None,
        status_dir: str | None = None,
    ) -> None:
        self._secret = secret
        self.delay = delay
        self.mode = mode or ModeFile(None)
        self.status_dir = status_dir
        # Per worker pid: the pushes received from its background loop (mode "asyncbridge"),
        # which the panel sets beside the loop's own count of completed jobs.
        self.from_loops: collections.Counter[int] = collections.Counter()
        self.loops: dict[str, Any] | None = None
        self._loops_failing = False
        self.paths: collections.Counter[str] = collections.Counter()
        self.total = 0
        # Recent event ids, to count duplicates; bounded so that a long run does not grow.
        self._recent_ids: collections.OrderedDict[str, None] = collections.OrderedDict()
        self.duplicates = 0
        self.rejected = 0
        # Validly signed events whose sender had gone by the time the answer was ready.
        self.abandoned = 0
        self.in_flight = 0  # signed events held for ``delay`` and not yet answered
        self.recent: collections.deque[dict[str, Any]] = collections.deque(maxlen=_RECENT_HITS)
        self._accepted_at: collections.deque[float] = collections.deque()
        self._seconds: dict[int, _Second] = collections.defaultdict(_Second)
        self.series: collections.deque[dict[str, Any]] = collections.deque(maxlen=_SERIES_POINTS)
        self._plotted_until: int | None = None
        self.late_samples = 0
        self._subscribers: set[asyncio.Queue[_Message | None]] = set()

    def rate(self) -> float:
        """Events accepted per second over the last 10 s."""
        cutoff = time.monotonic() - _RATE_WINDOW_S
        while self._accepted_at and self._accepted_at[0] < cutoff:
            self._accepted_at.popleft()
        return round(len(self._accepted_at) / _RATE_WINDOW_S, 1)

    def counts(self) -> dict[str, Any]:
        """The counts, the rate and the mode, as one JSON-ready dict."""
        return {
            "total": self.total,
            "paths": dict(self.paths),
            "duplicates": self.duplicates,
            "rejected": self.rejected,
            "abandoned": self.abandoned,
            "in_flight": self.in_flight,
            "subscribers": len(self._subscribers),
            "rate": self.rate(),
            "mode": self.mode.read(),
        }

    def snapshot(self) -> dict[str, Any]:
        """Everything a dashboard needs to show the truth at once: counts, latest hits, graph,
        and with a status directory the workers' loops."""
        snap = {**self.counts(), "recent": list(self.recent), "series": list(self.series)}
        if self.status_dir is not None:
            snap["loops"] = self.loops
        return snap

    def _publish(self, event: str, data: dict[str, Any]) -> None:
        for queue in list(self._subscribers):
            try:
                queue.put_nowait((event, data))
            except asyncio.QueueFull:  # a stalled browser: drop it, it reconnects with a snapshot
                self._subscribers.discard(queue)

    async def post_event(self, request: web.Request) -> web.Response:
        received = time.time()
        body = await request.read()
        # The header value is never logged: a forged or replayed signature is no one's business
        # in the log, and the secret is not in it anyway.
        if not verify(self._secret, body, request.headers.get(SIGNATURE_HEADER)):
            self.rejected += 1
            logger.warning("rejected an event from %s: missing or bad signature", request.remote)
            return web.json_response({"error": "missing or bad signature"}, status=401)
        try:
            event = json.loads(body)
            path = str(event["path"])[:200]
            event_id = str(event["id"])
        except (ValueError, KeyError, TypeError):
            return web.json_response({"error": "expected JSON with id and path"}, status=400)
        handed_off = event.get("at")
        if isinstance(handed_off, int | float):
            self._seconds[int(received)].arrivals.append(max(0.0, received - handed_off) * 1000)
        if self.delay:  # a slow push service: work is still in flight when the app stops
            self.in_flight += 1
            try:
                await asyncio.sleep(self.delay)
            finally:
                self.in_flight -= 1
        # aiohttp runs a handler to its end after the client has gone, so an event from a worker
        # that died (or gave up) while waiting would be counted as delivered. Count it only if
        # its sender is still connected when the answer goes out.
        transport = request.transport
        if transport is None or transport.is_closing():
            self.abandoned += 1
            return web.json_response({"error": "the sender has gone"}, status=499)
        if event_id in self._recent_ids:
            self.duplicates += 1
        self._recent_ids[event_id] = None
        if len(self._recent_ids) > _RECENT_IDS:
            self._recent_ids.popitem(last=False)
        self.paths[path] += 1
        self.total += 1
        pid = event.get("pid")
        if event.get("mode") == "asyncbridge" and isinstance(pid, int):
            if pid in self.from_loops or len(self.from_loops) < _MAX_SENDERS:
                self.from_loops[pid] += 1
        self._accepted_at.append(time.monotonic())
        message = {
            "id": event_id,
            "path": path,
            "count": self.paths[path],
            "total": self.total,
            "pid": event.get("pid"),
            "at": time.time(),
        }
        self.recent.appendleft(message)
        self._publish("hit", message)
        return web.json_response({"ok": True, "total": self.total}, status=202)

    async def post_metrics(self, request: web.Request) -> web.Response:
        body = await request.read()
        if not verify(self._secret, body, request.headers.get(SIGNATURE_HEADER)):
            self.rejected += 1
            logger.warning("rejected metrics from %s: missing or bad signature", request.remote)
            return web.json_response({"error": "missing or bad signature"}, status=401)
        try:
            report = json.loads(body)["samples"]
            samples = [(float(t), float(ms), str(mode)) for t, ms, mode in report]
        except (ValueError, KeyError, TypeError):
            return web.json_response({"error": "expected JSON with samples"}, status=400)
        for ended, ms, mode in samples:
            second = int(ended)
            if self._plotted_until is not None and second <= self._plotted_until:
                self.late_samples += 1
                continue
            bucket = self._seconds[second]
            bucket.requests.append(ms)
            bucket.modes.add(mode)
        return web.json_response({"ok": True}, status=202)

    def plot_until(self, second: int) -> list[dict[str, Any]]:
        """Turn every second up to ``second`` not yet plotted into a point of the graph.

        Returns:
            The new points, oldest first (a second without traffic has ``None`` values).
        """
        start = second if self._plotted_until is None else self._plotted_until + 1
        points = []
        for s in range(start, second + 1):
            bucket = self._seconds.pop(s, _Second())
            modes = sorted(bucket.modes)
            point = {
                "t": s,
                "requests": len(bucket.requests),
                "req_p50": _percentile(bucket.requests, 50),
                "req_p99": _percentile(bucket.requests, 99),
                "pushes": len(bucket.arrivals),
                "arr_p50": _percentile(bucket.arrivals, 50),
                "arr_p99": _percentile(bucket.arrivals, 99),
                "mode": modes[0] if len(modes) == 1 else ("mixed" if modes else None),
            }
            points.append(point)
            self.series.append(point)
        if self._plotted_until is None or second > self._plotted_until:
            self._plotted_until = second
        for stale in [s for s in self._seconds if s <= second]:  # reports older than the graph
            del self._seconds[stale]
        return points

    async def tick(self) -> None:
        """Once a second, just after the wall clock's second changes: plot and publish."""
        while True:
            now = time.time()
            await asyncio.sleep(math.floor(now) + 1.05 - now)
            for point in self.plot_until(int(time.time()) - _SERIES_LAG_S):
                self._publish("tick", {"point": point, "rate": self.rate()})

    async def read_loops(self) -> bool:
        """Read the workers' figures once; publish them if they changed.

        Returns:
            Whether they changed.
        """
        assert self.status_dir is not None
        try:
            figures = await asyncio.to_thread(loops.figures, self.status_dir, dict(self.from_loops))
        except Exception:  # the panel keeps its last figures; the next read may do better
            if not self._loops_failing:
                logger.exception("cannot read the workers' status in %s", self.status_dir)
            self._loops_failing = True
            return False
        self._loops_failing = False
        if figures == self.loops:
            return False
        self.loops = figures
        self._publish("loops", figures)
        return True

    async def watch_loops(self) -> None:
        """Twice a second: read the workers' figures, and publish them when they change."""
        while True:
            await self.read_loops()
            await asyncio.sleep(_LOOPS_EVERY_S)

    async def stream(self, request: web.Request) -> web.StreamResponse:
        queue: asyncio.Queue[_Message | None] = asyncio.Queue(_SUBSCRIBER_BACKLOG)
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",
            }
        )
        await response.prepare(request)
        self._subscribers.add(queue)
        try:
            await response.write(_sse("snapshot", self.snapshot()))
            while True:
                try:
                    message = await asyncio.wait_for(queue.get(), _KEEPALIVE_S)
                except TimeoutError:
                    await response.write(b": keep-alive\n\n")
                    continue
                if message is _CLOSE or queue not in self._subscribers:
                    break
                await response.write(_sse(*message))
        except (ConnectionResetError, ConnectionError):
            pass
        finally:
            self._subscribers.discard(queue)
        return response

    async def close_streams(self, app: web.Application) -> None:
        """End every open stream, so that the server's shutdown need not wait for them."""
        for queue in list(self._subscribers):
            self._subscribers.discard(queue)
            with contextlib.suppress(asyncio.QueueFull):  # a full one ends at its next message
                queue.put_nowait(_CLOSE)

    async def get_counts(self, request: web.Request) -> web.Response:
        return web.json_response({**self.counts(), "late_samples": self.late_samples})

    async def get_series(self, request: web.Request) -> web.Response:
        return web.json_response(list(self.series))

    async def get_loops(self, request: web.Request) -> web.Response:
        if self.status_dir is None:
            return web.json_response({"error": "the hub has no status directory"}, status=404)
        return web.json_response(self.loops)

    async def get_mode(self, request: web.Request) -> web.Response:
        return web.json_response({"mode": self.mode.read()})

    async def post_mode(self, request: web.Request) -> web.Response:
        # JSON only: a cross-site form cannot send it, and a cross-site fetch of it needs a CORS
        # preflight that the hub does not answer, so another page cannot flip the switch.
        if request.content_type != "application/json":
            return web.json_response({"error": 'send JSON: {"mode": ...}'}, status=415)
        try:
            mode = str((await request.json())["mode"])
            self.mode.write(mode)
        except (ValueError, KeyError, TypeError):
            return web.json_response(
                {"error": f'expected {{"mode": ...}} with one of {", ".join(MODES)}'}, status=400
            )
        except RuntimeError as exc:
            return web.json_response({"error": str(exc)}, status=409)
        logger.info("push mode set to %s", mode)
        self._publish("mode", {"mode": mode})
        return web.json_response({"mode": mode})

    async def dashboard(self, request: web.Request) -> web.FileResponse:
        return web.FileResponse(STATIC / "dashboard.html", headers={"Cache-Control": "no-cache"})

    async def favicon(self, request: web.Request) -> web.FileResponse:
        return web.FileResponse(STATIC / "favicon.svg", headers={"Content-Type": "image/svg+xml"})


def _sse(event: str, data: dict[str, Any]) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


def make_app(
    secret: bytes | None = None,
    *,
    delay: float = 0.0,
    mode: ModeFile | None = None,
    status_dir: str | None = None,
) -> web.Application:
    """The hub's aiohttp application.

    Args:
        secret: The shared secret events must be signed with; defaults to :func:`load_secret`.
        delay: Seconds to wait before answering each accepted event (a slow service).
        mode: Where the app's push mode is kept; by default a fixed ``asyncbridge`` mode.
        status_dir: The gunicorn workers' status directory, to show their loops' figures.
    """
    secret = load_secret() if secret is None else secret
    hub = Hub(secret, delay=delay, mode=mode, status_dir=status_dir)
    app = web.Application(client_max_size=_MAX_BODY)
    app["hub"] = hub
    app.router.add_post("/events", hub.post_event)
    app.router.add_post("/metrics", hub.post_metrics)
    app.router.add_get("/stream", hub.stream)
    app.router.add_get("/api/counts", hub.get_counts)
    app.router.add_get("/api/series", hub.get_series)
    app.router.add_get("/api/loops", hub.get_loops)
    app.router.add_get("/api/mode", hub.get_mode)
    app.router.add_post("/api/mode", hub.post_mode)
    app.router.add_get("/", hub.dashboard)
    app.router.add_get("/favicon.ico", hub.favicon)
    app.router.add_static("/static/", STATIC)

    async def ticking(app: web.Application) -> AsyncIterator[None]:
        tasks = [asyncio.create_task(hub.tick())]
        if hub.status_dir is not None:
            await hub.read_loops()  # the first snapshot already has them
            tasks.append(asyncio.create_task(hub.watch_loops()))
        yield
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    app.cleanup_ctx.append(ticking)
    app.on_shutdown.append(hub.close_streams)
    return app


async def _serve(
    host: str, port: int, *, managed: bool, delay: float, mode: ModeFile, status_dir: str | None
) -> None:
    app = make_app(delay=delay, mode=mode, status_dir=status_dir)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=5.0)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound = runner.addresses[0][1]
    logger.info("hub (pid %d) listening on http://%s:%d (dashboard at /)", os.getpid(), host, bound)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    if managed:
        # demo.run starts the hub in a session of its own, so a terminal's Ctrl-C does not reach
        # it; it must outlive gunicorn, whose workers push their last hits while they drain, and
        # demo.run stops it with SIGTERM once gunicorn has exited. SIGINT from elsewhere is
        # ignored for the same reason.
        loop.add_signal_handler(signal.SIGINT, lambda: None)
        parent = os.getppid()
    else:
        loop.add_signal_handler(signal.SIGINT, stop.set)
        parent = 0
    while not stop.is_set():
        if parent and os.getppid() != parent:
            logger.warning("hub: demo.run went away; stopping")
            break
        try:
            await asyncio.wait_for(stop.wait(), 1.0)
        except TimeoutError:
            pass
    hub: Hub = app["hub"]
    logger.info(
        "hub stopping: %d events accepted (%d duplicates), %d rejected, %d abandoned",
        hub.total,
        hub.duplicates,
        hub.rejected,
        hub.abandoned,
    )
    await runner.cleanup()


def main(argv: list[str] | None = None) -> None:
    """Command line: ``python -m demo.hub [--host 127.0.0.1] [--port 8001]``."""
    parser = argparse.ArgumentParser(prog="python -m demo.hub", description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8001, help="port (0: any free port)")
    parser.add_argument(
        "--delay", type=float, default=0.0, help="seconds to wait before accepting each event"
    )
    parser.add_argument(
        "--mode", choices=MODES, default=DEFAULT, help="how the app pushes, at the start"
    )
    parser.add_argument(
        "--mode-file",
        default=None,
        help="the file the app reads its push mode from; the switch writes it (default: none, "
        "the mode is fixed)",
    )
    parser.add_argument(
        "--status-dir",
        default=None,
        help="the asyncbridge status directory the gunicorn workers publish in (their "
        "ASYNCBRIDGE_STATUS_DIR), to show each worker's loop on the dashboard (default: none)",
    )
    parser.add_argument(
        "--managed", action="store_true", help="ignore SIGINT; stop on SIGTERM (used by demo.run)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s [hub] %(levelname)s %(message)s")
    mode = ModeFile(args.mode_file, args.mode)
    if args.mode_file:
        mode.write(args.mode)
    asyncio.run(
        _serve(
            args.host,
            args.port,
            managed=args.managed,
            delay=args.delay,
            mode=mode,
            status_dir=args.status_dir,
        )
    )


if __name__ == "__main__":
    main()
