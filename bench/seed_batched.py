"""The seed scenario, batched: one event per request, sent one per POST or ten per POST.

Run: ``.venv/bin/python bench/seed_batched.py`` (``--smoke`` for a short run).

gunicorn with 2 sync workers (``bench/seed_batched_conf.py``), the app ``bench/seed_batched_app.py``
handing one event per request to a sink in its own process that answers each POST after 100 ms,
whether it carries one event (``/notify``) or a batch (``/batch``). Modes: ``ceiling`` (no event),
``naive`` (a loop in a daemon thread, one POST per event), ``asyncbridge`` (``run_soon``, one POST
per event) and ``batched`` (``asyncbridge.batcher``, up to 10 events per POST). Saturation with
``wrk -c8`` (installed with apt-get when missing and run as root; else the bundled generator).
Every run ends with a graceful stop, after which the events the sink received are compared with
those the workers accepted. The target: batched serves at least 2x the naive loop's req/s, with
every event delivered.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from _common import ROOT, machine, print_table, target_line
from aiohttp import web
from seed_scenario import _children, _cpu_seconds, _sink_count, ensure_wrk, python_load, wrk_closed

from tests.e2e.procs import Server, free_port, wait_http
from tests.e2e.sink import Sink

BENCH = Path(__file__).resolve().parent
MODES = {
    "ceiling": "no event (ceiling)",
    "naive": "naive loop-in-thread, one POST per event",
    "asyncbridge": "asyncbridge.run_soon, one POST per event",
    "lean": "asyncbridge.run_soon, one POST per event, lean session",
    "batched": "asyncbridge.batcher, 10 events per POST",
}


class BatchSink(Sink):
    """tests/e2e/sink.py's Sink with a batch endpoint: ``POST /batch`` of ``{"events": [...]}``.

    A batch is answered after the same delay as one event, and its events are counted as the
    Sink counts one: only if the sender is still connected when the answer goes out.
    """

    async def _batch(self, request: web.Request) -> web.Response:
        body = await request.json()
        events = body["events"]
        with self._lock:
            self.requests += len(events)
        if self.delay:
            await asyncio.sleep(self.delay)
        transport = request.transport
        gone = transport is None or transport.is_closing()
        with self._lock:
            counter = self.abandoned if gone else self.ids
            for event in events:
                counter[str(event.get("id"))] += 1
        if gone:
            return web.json_response({"ok": False}, status=499)
        return web.json_response({"ok": True, "events": len(events)})

    async def _start_site(self) -> None:
        app = web.Application()
        app.router.add_post("/notify", self._notify)
        app.router.add_post("/batch", self._batch)
        app.router.add_get("/count", self._count)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        self._site = web.TCPSite(self._runner, "127.0.0.1", self.port, backlog=2048)
        await self._site.start()
        server = self._site._server
        assert isinstance(server, asyncio.Server)
        self.port = server.sockets[0].getsockname()[1]


_SINK = """
import sys
from seed_batched import BatchSink
sink = BatchSink(delay=float(sys.argv[1])).start()
print(sink.port, flush=True)
sys.stdin.read()
sink.stop()
"""


@dataclass
class Run:
    mode: str
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    accepted: int
    received: int
    served: int
    cpu_us_per_req: float


def one_run(mode: str, seconds: float, wrk: str | None) -> Run:
    env_path = os.pathsep.join([str(ROOT), str(BENCH)])
    sink = subprocess.Popen(
        [sys.executable, "-c", _SINK, "0.1"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": env_path},
    )
    try:
        assert sink.stdout is not None and sink.stdin is not None
        sink_port = int(sink.stdout.readline())
        port = free_port()
        with tempfile.TemporaryDirectory(prefix=f"seed-batched-{mode}-") as tmp:
            env = {
                "SEED_MODE": mode,
                "SEED_SINK": f"http://127.0.0.1:{sink_port}",
                "SEED_OUT": tmp,
                "SEED_BIND": f"127.0.0.1:{port}",
                "PYTHONPATH": env_path,
            }
            argv = [
                sys.executable,
                "-m",
                "gunicorn",
                "-c",
                str(BENCH / "seed_batched_conf.py"),
                "seed_batched_app:app",
            ]
            server = Server(argv, log=Path(tmp) / "gunicorn.log", env=env)
            try:
                url = f"http://127.0.0.1:{port}/"
                wait_http(url, 30, server.proc)
                time.sleep(1.0)
                workers = _children(server.pid)
                cpu_before = sum(_cpu_seconds(w) for w in workers)
                main_before = sum(_cpu_seconds(w, w) for w in workers)
                if wrk:
                    rps, p50, p99, errors = wrk_closed(wrk, url, seconds, 8)
                else:
                    rps, p50, p99, errors = python_load(port, seconds, connections=8)
                if _children(server.pid) != workers:
                    raise RuntimeError(f"{mode}: a worker was replaced during the load")
                cpu = sum(_cpu_seconds(w) for w in workers) - cpu_before
                main_cpu = sum(_cpu_seconds(w, w) for w in workers) - main_before
                served = round(rps * seconds)
                server.signal(signal.SIGTERM)
                server.wait(60)
            finally:
                server.stop()
            counts = [json.loads(p.read_text()) for p in Path(tmp).glob("*.json")]
            accepted = sum(c["accepted"] for c in counts)
            flushes = sum(c.get("flushes", 0) for c in counts)
        deadline = time.monotonic() + 15
        received, requests = _sink_count(sink_port)
        while requests != received and time.monotonic() < deadline:
            time.sleep(0.05)
            received, requests = _sink_count(sink_port)
    finally:
        if sink.stdin:
            sink.stdin.close()
        try:
            sink.wait(10)
        except subprocess.TimeoutExpired:
            sink.kill()
            sink.wait(10)
    run = Run(mode, rps, p50, p99, errors, accepted, received, served, cpu / max(served, 1) * 1e6)
    print(
        f"  {mode}: {rps:.0f} req/s, p99 {p99:.1f} ms, {received}/{accepted} received, "
        f"{run.cpu_us_per_req:.0f} us CPU per request "
        f"({main_cpu / max(served, 1) * 1e6:.0f} in the request thread)"
        + (f", {accepted / flushes:.1f} events per POST" if flushes else ""),
        flush=True,
    )
    return run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="gunicorn seed scenario, batched")
    parser.add_argument("--seconds", type=float, default=8.0, help="load length per run (8)")
    parser.add_argument("--runs", type=int, default=3, help="interleaved runs per mode (3)")
    parser.add_argument(
        "--modes",
        default="ceiling,naive,asyncbridge,batched",
        help=f"comma-separated, from {', '.join(MODES)} (default: all but lean)",
    )
    parser.add_argument("--no-wrk", action="store_true", help="use the bundled generator only")
    parser.add_argument("--smoke", action="store_true", help="1 s per run, 1 run")
    args = parser.parse_args(argv)
    if args.smoke:
        args.seconds, args.runs = 1.0, 1
    modes = [m for m in args.modes.split(",") if m]
    unknown = set(modes) - set(MODES)
    if unknown:
        parser.error(f"unknown modes: {sorted(unknown)}")
    wrk = None if args.no_wrk else ensure_wrk()
    print("# seed scenario, batched (gunicorn, 2 sync workers, sink answering after 100 ms)")
    print(f"machine: {machine()}")
    print(
        f"{args.seconds:g} s per run, {args.runs} interleaved run(s) per mode; saturation load: "
        f"{'wrk -c8' if wrk else 'bundled closed-loop generator, 8 connections'}"
    )
    runs: dict[str, list[Run]] = {m: [] for m in modes}
    for _ in range(args.runs):
        for mode in modes:
            runs[mode].append(one_run(mode, args.seconds, wrk))
    rows: list[list[object]] = []
    medians: dict[str, float] = {}
    for mode in modes:
        rs = runs[mode]
        medians[mode] = statistics.median(r.rps for r in rs)
        accepted = sum(r.accepted for r in rs)
        received = sum(r.received for r in rs)
        rows.append(
            [
                MODES[mode],
                medians[mode],
                statistics.median(r.p50_ms for r in rs),
                statistics.median(r.p99_ms for r in rs),
                sum(r.errors for r in rs),
                "n/a" if mode == "ceiling" else f"{received}/{accepted}",
                float("nan") if not accepted else 100 * received / accepted,
                statistics.median(r.cpu_us_per_req for r in rs),
            ]
        )
    print_table(
        "saturation (closed loop, 8 connections)",
        [
            "mode",
            "req/s",
            "p50 ms",
            "p99 ms",
            "errors",
            "received/accepted",
            "% received",
            "worker CPU us/req",
        ],
        rows,
    )
    print("\n### targets (ratios from this run)\n")
    if {"lean", "asyncbridge"} <= medians.keys():
        lean = medians["lean"] / medians["asyncbridge"]
        print(f"(lean session / default session req/s: {lean:.2f})")
    if {"batched", "naive"} <= medians.keys():
        target_line(
            "saturation: batched / naive req/s",
            medians["batched"] / medians["naive"],
            ">=",
            2.0,
            "medians",
        )
    for mode in ("batched", "asyncbridge", "lean"):
        if mode in runs:
            accepted = sum(r.accepted for r in runs[mode])
            received = sum(r.received for r in runs[mode])
            target_line(
                f"saturation: {mode} events received / accepted (%)",
                100 * received / accepted if accepted else float("nan"),
                ">=",
                100,
                f"{received}/{accepted}",
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
