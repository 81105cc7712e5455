"""One destination down: gunicorn gthread workers notify two destinations, one of them broken.

Run: ``.venv/bin/python bench/lanes.py`` (``--smoke`` for a short run).

Each request hands one notification to a healthy sink (it answers after 100 ms) and one to a
broken one (503 with ``Retry-After: 1`` for its first second, then it hangs), each sent with
``asyncbridge.retrying(post_json, ...)``. Three configurations run under the same open-loop load,
interleaved:

- **without it**: the healthy destination only (the baseline);
- **lanes**: each destination in its own lane (``asyncbridge.lane("healthy")``, ``"broken"``);
- **one shared lane**: both on the default lane, for comparison (what happens without lanes).

The table shows the healthy destination's arrival latency (from the hand-off in the request to
the sink's receipt), the requests' latency, and delivery after a graceful stop. The targets: with
lanes, healthy arrival p99 and request p99 at most 1.2x the baseline's, and 100% delivered.

This module is also the WSGI app (``lanes:app``, configured by ``LANES_*`` variables) that the
benchmark and ``tests/e2e/test_lanes.py`` serve with gunicorn.
"""

from __future__ import annotations

import atexit
import collections
import dataclasses
import itertools
import json
import os
import sys
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import aiohttp

import asyncbridge
from asyncbridge.aiohttp import post_json

# -- the app (imported by each gunicorn worker) -------------------------------------------------

MODE = os.environ.get("LANES_MODE", "lanes")  # lanes, shared, or healthy (no broken destination)
HEALTHY_URL = os.environ.get("LANES_HEALTHY", "")
BROKEN_URL = os.environ.get("LANES_BROKEN", "") if MODE != "healthy" else ""
OUT = Path(os.environ.get("LANES_OUT", "."))
ATTEMPTS = int(os.environ.get("LANES_ATTEMPTS", "3"))
BUDGET = float(os.environ.get("LANES_BUDGET", "5"))
# One try at the broken destination waits this long for an answer; it never comes once it hangs.
TRY_TIMEOUT = aiohttp.ClientTimeout(total=float(os.environ.get("LANES_TRY_TIMEOUT", "0.5")))

if MODE in ("lanes", "healthy"):
    # Sized per destination: each needs rate x 0.1 s in flight when it answers in 100 ms (7.5 at
    # 75 req/s per worker); the healthy one gets plenty, the flaky one few
    # (LANES_BROKEN_CONCURRENCY: the benchmark gives it 8, its healthy need, as the guide
    # advises), so that a hang holds few slots and few hung connections.
    HEALTHY = asyncbridge.lane("healthy", max_concurrency=100)
    BROKEN = asyncbridge.lane(
        "broken",
        max_concurrency=int(os.environ.get("LANES_BROKEN_CONCURRENCY", "16")),
        max_pending=2000,
    )
else:
    HEALTHY = BROKEN = asyncbridge.lane("default")

_ids = itertools.count()
_pid = os.getpid()
# Hand-offs each destination accepted in this worker.
_handed = {"healthy": 0, "broken": 0}
_handed_lock = threading.Lock()


def _count(destination: str) -> None:
    global _handed
    with _handed_lock:
        _handed = {**_handed, destination: _handed[destination] + 1}


StartResponse = Callable[[str, list[tuple[str, str]]], object]


def stats_json() -> bytes:
    """This worker's stats, with the lanes and each destination's accepted hand-offs, as JSON."""
    stats = dataclasses.asdict(asyncbridge.stats())
    stats["handed"] = _handed
    return json.dumps(stats).encode()


def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    """One notification per destination per request; ``/stats`` answers this worker's stats."""
    if environ.get("PATH_INFO") == "/stats":
        body = stats_json()
    else:
        payload = {"id": f"{os.getpid()}-{next(_ids)}", "t": time.time()}
        if HEALTHY.run_soon(asyncbridge.retrying(post_json, HEALTHY_URL, payload)):
            _count("healthy")
        if BROKEN_URL and BROKEN.run_soon(
            asyncbridge.retrying(
                post_json,
                BROKEN_URL,
                payload,
                attempts=ATTEMPTS,
                budget=BUDGET,
                timeout=TRY_TIMEOUT,
            )
        ):
            _count("broken")
        body = payload["id"].encode()  # type: ignore[attr-defined]
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


def _write_stats() -> None:
    # After the gunicorn adapter's worker_exit drained the bridge: the final figures.
    if os.getpid() == _pid and os.environ.get("LANES_OUT"):
        (OUT / f"{_pid}.json").write_bytes(stats_json())


atexit.register(_write_stats)


# -- the benchmark ------------------------------------------------------------------------------

CONFIGS = {
    "healthy": "without it (healthy destination only)",
    "lanes": "one destination down, a lane each",
    "shared": "one destination down, one shared lane",
}

# Each destination in its own process (no GIL shared with each other, gunicorn or the load: the
# broken one's hung requests must not delay the healthy one's receipts): its port on stdout, and
# when stdin closes, what it received.
_SINK = """
import json, sys
from tests.e2e.test_lanes import BrokenSink, LatencySink
if sys.argv[1] == "healthy":
    sink = LatencySink(delay=0.1).start()
else:
    sink = BrokenSink(fail_for=1.0).start()
print(sink.port, flush=True)
sys.stdin.read()
if sys.argv[1] == "healthy":
    result = {"ids": dict(sink.ids), "latencies": list(sink.latencies.values())}
else:
    result = {"requests": sink.requests}
sink.stop()
print(json.dumps(result), flush=True)
"""


_CONF = """\
from asyncbridge.gunicorn import *
bind = "127.0.0.1:{port}"
workers = 2
worker_class = "gthread"
threads = 8
graceful_timeout = 20
timeout = 40
accesslog = None
control_socket_disable = True
"""


@dataclasses.dataclass
class Run:
    config: str
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    arrival_p50_ms: float
    arrival_p99_ms: float
    healthy_accepted: int
    healthy_received: int
    broken: dict[str, int]
    log_lines: int
    cpu_us: float  # the workers' CPU per request during the load


def one_run(
    config: str, seconds: float, rate: float, try_timeout: float, broken_concurrency: int
) -> Run:
    """Fresh sinks and gunicorn, the load, a graceful stop, then the counts."""
    import signal
    import subprocess
    import tempfile

    from _common import ROOT, percentile
    from seed_scenario import _children, _cpu_seconds, python_load

    from tests.e2e.procs import Server, free_port, wait_http

    sinks = {
        name: subprocess.Popen(
            [sys.executable, "-c", _SINK, name],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        for name in ("healthy", "broken")
    }
    try:
        ports = {}
        for name, sink in sinks.items():
            assert sink.stdout is not None
            ports[name] = int(sink.stdout.readline())
        port = free_port()
        with tempfile.TemporaryDirectory(prefix=f"lanes-{config}-") as tmp:
            conf = Path(tmp) / "gunicorn.conf.py"
            conf.write_text(_CONF.format(port=port))
            env = {
                "LANES_MODE": config,
                "LANES_HEALTHY": f"http://127.0.0.1:{ports['healthy']}/notify",
                "LANES_BROKEN": f"http://127.0.0.1:{ports['broken']}/notify",
                "LANES_OUT": tmp,
                "ASYNCBRIDGE_DRAIN_TIMEOUT": "5",
                "LANES_TRY_TIMEOUT": str(try_timeout),
                "LANES_BROKEN_CONCURRENCY": str(broken_concurrency),
                "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "bench")]),
            }
            argv = [sys.executable, "-m", "gunicorn", "-c", str(conf), "lanes:app"]
            server = Server(argv, log=Path(tmp) / "gunicorn.log", env=env)
            try:
                wait_http(f"http://127.0.0.1:{port}/stats", 30, server.proc)
                time.sleep(1.0)
                workers = _children(server.pid)
                cpu_before = sum(_cpu_seconds(w) for w in workers)
                rps, p50, p99, errors = python_load(port, seconds, rate=rate)
                cpu = sum(_cpu_seconds(w) for w in workers) - cpu_before
                server.signal(signal.SIGTERM)
                server.wait(60)
            finally:
                server.stop()
            log = (Path(tmp) / "gunicorn.log").read_text(errors="replace")
            stats = [json.loads(p.read_text()) for p in Path(tmp).glob("*.json")]
        results = {}
        for name, sink in sinks.items():
            assert sink.stdin is not None and sink.stdout is not None
            sink.stdin.close()
            results[name] = json.loads(sink.stdout.readline())
            sink.wait(30)
    finally:
        for sink in sinks.values():
            if sink.poll() is None:
                sink.kill()
                sink.wait(10)
    result = {
        "healthy_ids": results["healthy"]["ids"],
        "latencies": results["healthy"]["latencies"],
        "broken_requests": results["broken"]["requests"],
    }
    if len(stats) != 2:
        raise RuntimeError(f"{config}: {len(stats)} worker reports, expected 2:\n{log[-3000:]}")
    broken: dict[str, int] = collections.Counter()
    healthy_accepted = 0
    for s in stats:
        healthy_accepted += s["handed"]["healthy"]
        broken["accepted"] += s["handed"]["broken"]
        # The broken destination's lane (in the shared config, the one lane both use: healthy
        # notifications never fail there, but may be among those cancelled at the deadline).
        lane = s["lanes"].get("broken" if config == "lanes" else "default")
        if lane is not None and config != "healthy":
            for key in ("failed", "cancelled"):
                broken[key] += lane[key]
        broken["retries"] += s["retries"]
        broken["dropped"] += sum(s["dropped"].values())
    latencies = [1000 * x for x in result["latencies"]]
    run = Run(
        config,
        rps,
        p50,
        p99,
        errors,
        percentile(latencies, 50) if latencies else float("nan"),
        percentile(latencies, 99) if latencies else float("nan"),
        healthy_accepted,
        sum(result["healthy_ids"].values()),
        dict(broken),
        sum("asyncbridge" in line for line in log.splitlines()),
        cpu / max(1.0, rps * seconds) * 1e6,
    )
    print(
        f"  {config}: {rps:.0f} req/s, request p99 {p99:.1f} ms, healthy arrival p99 "
        f"{run.arrival_p99_ms:.1f} ms, healthy {run.healthy_received}/{healthy_accepted}, "
        f"broken {dict(broken)}, {run.log_lines} asyncbridge log lines, broken sink saw "
        f"{result['broken_requests']} requests, {run.cpu_us:.0f} us worker CPU per request, "
        f"load average {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    return run


def main(argv: list[str] | None = None) -> int:
    import argparse
    import statistics

    from _common import machine, print_table, target_line

    parser = argparse.ArgumentParser(description="one destination down, with and without lanes")
    parser.add_argument("--seconds", type=float, default=8.0, help="load per run (8)")
    parser.add_argument("--rate", type=float, default=150.0, help="requests per second (150)")
    parser.add_argument("--runs", type=int, default=3, help="interleaved runs per config (3)")
    parser.add_argument("--configs", default=",".join(CONFIGS), help="comma-separated subset")
    parser.add_argument(
        "--try-timeout",
        type=float,
        default=2.0,
        help="seconds one try at the hanging destination waits for its answer (2)",
    )
    parser.add_argument(
        "--broken-concurrency",
        type=int,
        default=8,
        help="the broken lane's max_concurrency per worker (8: what it needs when it answers)",
    )
    parser.add_argument("--smoke", action="store_true", help="2 s per run, 1 run")
    args = parser.parse_args(argv)
    if args.smoke:
        args.seconds, args.runs = 2.0, 1
    configs = [c for c in args.configs.split(",") if c]
    print("# one destination down: gunicorn gthread, 2 workers x 8 threads")
    print(f"machine: {machine()}")
    print(
        f"load: {args.rate:g} req/s for {args.seconds:g} s, {args.runs} runs per config; a try "
        f"at the broken destination waits {args.try_timeout:g} s, 3 tries, budget 5 s; the "
        f"broken lane has {args.broken_concurrency} slots per worker"
    )
    runs: dict[str, list[Run]] = {c: [] for c in configs}
    for _ in range(args.runs):
        for config in configs:
            runs[config].append(
                one_run(config, args.seconds, args.rate, args.try_timeout, args.broken_concurrency)
            )
    medians: dict[str, dict[str, float]] = {}
    rows: list[list[object]] = []
    for config in configs:
        rs = runs[config]
        med = {
            "rps": statistics.median(r.rps for r in rs),
            "p50": statistics.median(r.p50_ms for r in rs),
            "p99": statistics.median(r.p99_ms for r in rs),
            "a50": statistics.median(r.arrival_p50_ms for r in rs),
            "a99": statistics.median(r.arrival_p99_ms for r in rs),
        }
        medians[config] = med
        accepted = sum(r.healthy_accepted for r in rs)
        received = sum(r.healthy_received for r in rs)
        broken: dict[str, int] = collections.Counter()
        for r in rs:
            broken.update(r.broken)
        rows.append(
            [
                CONFIGS[config],
                med["rps"],
                med["p50"],
                med["p99"],
                sum(r.errors for r in rs),
                med["a50"],
                med["a99"],
                f"{received}/{accepted}",
                "n/a"
                if config == "healthy"
                else f"{broken['accepted']}/{broken['failed']}/{broken['cancelled']}",
                broken["retries"],
                broken["dropped"],
                sum(r.log_lines for r in rs),
                statistics.median(r.cpu_us for r in rs),
            ]
        )
    print_table(
        "one destination down",
        [
            "config",
            "req/s",
            "request p50 ms",
            "request p99 ms",
            "errors",
            "healthy arrival p50 ms",
            "healthy arrival p99 ms",
            "healthy received/accepted",
            "broken accepted/failed/cancelled",
            "retries",
            "dropped",
            "asyncbridge log lines",
            "worker CPU us/req",
        ],
        rows,
    )
    print("\n### targets (ratios from this run)\n")
    if {"lanes", "healthy"} <= medians.keys():
        target_line(
            "lanes: healthy arrival p99 / without the broken destination",
            medians["lanes"]["a99"] / medians["healthy"]["a99"],
            "<=",
            1.2,
            "medians",
        )
        target_line(
            "lanes: request p99 / without the broken destination",
            medians["lanes"]["p99"] / medians["healthy"]["p99"],
            "<=",
            1.2,
            "medians",
        )
    if "lanes" in runs:
        accepted = sum(r.healthy_accepted for r in runs["lanes"])
        received = sum(r.healthy_received for r in runs["lanes"])
        target_line(
            "lanes: healthy notifications received / accepted (%)",
            100 * received / accepted if accepted else float("nan"),
            ">=",
            100,
            f"{received}/{accepted}",
        )
    if {"shared", "healthy"} <= medians.keys():
        print(
            "(one shared lane: healthy arrival p99 "
            f"{medians['shared']['a99'] / medians['healthy']['a99']:.1f}x without the broken "
            "destination)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
