"""The seed scenario end to end: gunicorn, 2 sync workers, one notification per request.

Run: ``.venv/bin/python bench/seed_scenario.py`` (``--smoke`` for a short run).

The sink (``tests/e2e/sink.py``, in its own process so that it shares no GIL with anything) answers
each notification after 100 ms. The app (``bench/seed_app.py``) sends one per request, in one of
five modes: none (the ceiling), a blocking ``requests`` call, a thread per call, the naive
loop-in-thread, and asyncbridge with its aiohttp helper. Each run starts a fresh sink and a fresh
gunicorn, applies the load, reads worker RSS, stops gunicorn gracefully (SIGTERM), then compares
the notifications the sink received with those the workers accepted.

Loads: saturation (closed loop, 8 connections; ``wrk`` when installed, which this command tries to
install with apt-get when run as root, else a bundled Python load generator) and a fixed rate of
300 req/s (bundled open-loop generator; latency counted from each request's scheduled send time).
Runs are interleaved across modes; the table shows medians.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from _common import ROOT, machine, percentile, print_table, rss_kib, target_line

from tests.e2e.procs import Server, free_port, wait_http

BENCH = Path(__file__).resolve().parent
MODES = {
    "ceiling": "no notification (ceiling)",
    "blocking": "blocking requests.post in the request",
    "thread": "thread per call (requests)",
    "naive": "naive loop-in-thread (no drain)",
    "asyncbridge": "asyncbridge.run_soon + aiohttp helper",
}
DEFAULT_MODES = ["ceiling", "blocking", "thread", "naive", "asyncbridge"]

# The sink listens with a backlog of 2,048 instead of aiohttp's 128: up to 1,000 pooled
# connections (2 workers x 500) open at once when the load starts.
_SINK = """
import functools
import sys
from aiohttp import web
web.TCPSite = functools.partial(web.TCPSite, backlog=2048)
from tests.e2e.sink import Sink
sink = Sink(delay=float(sys.argv[1])).start()
print(sink.port, flush=True)
sys.stdin.read()  # until the benchmark closes our stdin
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
    rss_mib: float
    served: int  # requests answered during the load
    main_cpu: float  # seconds of CPU in the workers' request (main) threads
    other_cpu: float  # seconds of CPU in every other thread of the workers (loop, per-call threads)
    back_offs: int = 0  # asyncbridge's back-off sleeps in the workers (0 in other modes)
    flushes: int = 0  # batches the workers flushed (the batched mode of seed_batched.py)
    sink_cpu: float = 0.0  # seconds of CPU in the sink's process during the load


# -- load generators ------------------------------------------------------------------------------


def ensure_wrk() -> str | None:
    """Path of ``wrk``, installing it with apt-get first when root and it is missing."""
    found = shutil.which("wrk")
    if found or os.geteuid() != 0 or not shutil.which("apt-get"):
        return found
    print("wrk not found; trying apt-get install -y wrk", flush=True)
    subprocess.run(
        ["apt-get", "install", "-y", "-q", "wrk"],
        env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        timeout=300,
        check=False,
    )
    return shutil.which("wrk")


def _ms(value: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", value).groups()  # type: ignore[union-attr]
    return float(number) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}[unit]


def wrk_closed(
    wrk: str, url: str, seconds: float, connections: int
) -> tuple[float, float, float, int]:
    """Saturate ``url`` with wrk; returns (req/s, p50 ms, p99 ms, non-2xx responses + errors)."""
    out = subprocess.run(
        [
            wrk,
            "-t2",
            f"-c{connections}",
            f"-d{max(1, round(seconds))}s",
            "--timeout",
            "10s",
            "--latency",
            url,
        ],
        capture_output=True,
        text=True,
        timeout=seconds + 60,
        check=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = _ms(re.search(r"\s50%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    p99 = _ms(re.search(r"\s99%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    failed = (int(bad.group(1)) if bad else 0) + (
        sum(int(g) for g in errors.groups()) if errors else 0
    )
    return rps, p50, p99, failed


async def _one(host: str, port: int) -> int:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
        data = await reader.read()
    finally:
        writer.close()
    return int(data.split(b" ", 2)[1])


async def _closed(host: str, port: int, seconds: float, connections: int) -> tuple[list[int], int]:
    latencies: list[int] = []
    errors = 0
    end = time.perf_counter_ns() + int(seconds * 1e9)

    async def client() -> None:
        nonlocal errors
        while time.perf_counter_ns() < end:
            t0 = time.perf_counter_ns()
            try:
                status = await _one(host, port)
            except OSError:
                status = 0
            latencies.append(time.perf_counter_ns() - t0)
            errors += status != 200

    await asyncio.gather(*(client() for _ in range(connections)))
    return latencies, errors


async def _open(host: str, port: int, seconds: float, rate: float) -> tuple[list[int], int]:
    latencies: list[int] = []
    errors = 0
    start = time.perf_counter_ns()
    tasks = []

    async def request(scheduled: int) -> None:
        nonlocal errors
        try:
            status = await asyncio.wait_for(_one(host, port), 10)
        except (OSError, TimeoutError):
            status = 0
        latencies.append(time.perf_counter_ns() - scheduled)
        errors += status != 200

    for i in range(int(seconds * rate)):
        scheduled = start + int(i / rate * 1e9)
        delay = (scheduled - time.perf_counter_ns()) / 1e9
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(request(scheduled)))
    await asyncio.gather(*tasks)
    return latencies, errors


def python_load(
    url_port: int, seconds: float, *, connections: int = 8, rate: float | None = None
) -> tuple[float, float, float, int]:
    """The bundled generator: closed loop over ``connections``, or open loop at ``rate``."""
    t0 = time.perf_counter()
    if rate is None:
        latencies, errors = asyncio.run(_closed("127.0.0.1", url_port, seconds, connections))
    else:
        latencies, errors = asyncio.run(_open("127.0.0.1", url_port, seconds, rate))
    elapsed = time.perf_counter() - t0
    return (
        len(latencies) / elapsed,
        percentile(latencies, 50) / 1e6,
        percentile(latencies, 99) / 1e6,
        errors,
    )


# -- one run ----------------------------------------------------------------------------------


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def _cpu_seconds(pid: int, tid: int | None = None) -> float:
    path = f"/proc/{pid}/stat" if tid is None else f"/proc/{pid}/task/{tid}/stat"
    fields = Path(path).read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _sink_count(port: int) -> tuple[int, int]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/count", timeout=5) as resp:
        body = json.loads(resp.read())
    return int(body["received"]), int(body["requests"])


def one_run(
    mode: str, load: str, seconds: float, wrk: str | None, rate: float, *, sink_script: str = _SINK
) -> Run:
    """A fresh sink (``sink_script``, its port on stdout) and gunicorn, the load, a graceful
    stop, then what the sink received against what the workers accepted."""
    path = os.pathsep.join([str(ROOT), str(BENCH)])
    sink = subprocess.Popen(
        [sys.executable, "-c", sink_script, "0.1"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": path},
    )
    try:
        assert sink.stdout is not None and sink.stdin is not None
        sink_port = int(sink.stdout.readline())
        port = free_port()
        with tempfile.TemporaryDirectory(prefix=f"seed-{mode}-") as tmp:
            env = {
                "SEED_MODE": mode,
                "SEED_SINK": f"http://127.0.0.1:{sink_port}",
                "SEED_OUT": tmp,
                "SEED_BIND": f"127.0.0.1:{port}",
                "PYTHONPATH": path,
            }
            argv = [
                sys.executable,
                "-m",
                "gunicorn",
                "-c",
                str(BENCH / "seed_gunicorn_conf.py"),
                "seed_app:app",
            ]
            server = Server(argv, log=Path(tmp) / "gunicorn.log", env=env)
            try:
                url = f"http://127.0.0.1:{port}/"
                wait_http(url, 30, server.proc)
                time.sleep(1.0)  # both workers up and idle: their start-up CPU is not counted
                workers = _children(server.pid)
                main_before = sum(_cpu_seconds(w, w) for w in workers)
                all_before = sum(_cpu_seconds(w) for w in workers)
                sink_before = _cpu_seconds(sink.pid)
                if load == "saturation" and wrk:
                    rps, p50, p99, errors = wrk_closed(wrk, url, seconds, 8)
                elif load == "saturation":
                    rps, p50, p99, errors = python_load(port, seconds, connections=8)
                else:
                    rps, p50, p99, errors = python_load(port, seconds, rate=rate)
                if _children(server.pid) != workers:
                    raise RuntimeError(f"{mode}: a worker was replaced during the load")
                rss = statistics.fmean(rss_kib(w) for w in workers) / 1024 if workers else 0.0
                main_cpu = sum(_cpu_seconds(w, w) for w in workers) - main_before
                other_cpu = sum(_cpu_seconds(w) for w in workers) - all_before - main_cpu
                sink_cpu = _cpu_seconds(sink.pid) - sink_before
                load_requests = round(rps * seconds)
                server.signal(signal.SIGTERM)
                server.wait(60)  # graceful_timeout is 25 s
            finally:
                server.stop()
            if mode == "asyncbridge":
                # The workers' shutdown reports (one line each): what was cancelled, if anything.
                for line in (Path(tmp) / "gunicorn.log").read_text(errors="replace").splitlines():
                    if "accepted=" in line:
                        print(f"  [{load}] {line.strip()}", flush=True)
            counts = [json.loads(p.read_text()) for p in Path(tmp).glob("*.json")]
            accepted = sum(c["accepted"] for c in counts)
            back_offs = sum(c.get("back_offs", 0) for c in counts)
            flushes = sum(c.get("flushes", 0) for c in counts)
        # The sink counts a notification once it has answered it (100 ms after receipt).
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
    run = Run(
        mode,
        rps,
        p50,
        p99,
        errors,
        accepted,
        received,
        rss,
        load_requests,
        main_cpu,
        other_cpu,
        back_offs,
        flushes,
        sink_cpu,
    )
    served = max(1, load_requests)
    print(
        f"  [{load}] {mode}: {rps:.0f} req/s, p99 {p99:.1f} ms, {received}/{accepted} received, "
        f"{(main_cpu + other_cpu) / served * 1e6:.0f} us CPU per request "
        f"({main_cpu / served * 1e6:.0f} in the request thread; the sink "
        f"{sink_cpu / served * 1e6:.0f})"
        + (f", {back_offs} back-offs" if mode in ("asyncbridge", "lean", "batched") else "")
        + (f", {accepted / flushes:.1f} per POST" if flushes else "")
        + f", load average {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    return run


# -- the report -------------------------------------------------------------------------------


def table(
    title: str, runs: dict[str, list[Run]], labels: dict[str, str] = MODES
) -> dict[str, dict[str, float]]:
    """Print the runs' medians (req/s, latency, RSS) and totals (delivery, CPU) by mode, in the
    order of ``labels``; return the medians."""
    rows: list[list[object]] = []
    medians: dict[str, dict[str, float]] = {}
    for mode, label in labels.items():
        rs = runs.get(mode)
        if not rs:
            continue
        med = {
            "rps": statistics.median(r.rps for r in rs),
            "p50": statistics.median(r.p50_ms for r in rs),
            "p99": statistics.median(r.p99_ms for r in rs),
            "rss": statistics.median(r.rss_mib for r in rs),
        }
        served = sum(r.served for r in rs) or 1
        medians[mode] = med
        accepted = sum(r.accepted for r in rs)
        received = sum(r.received for r in rs)
        delivered = "n/a" if mode == "ceiling" else f"{received}/{accepted}"
        share = float("nan") if not accepted else 100 * received / accepted
        rows.append(
            [
                label,
                med["rps"],
                med["p50"],
                med["p99"],
                sum(r.errors for r in rs),
                delivered,
                share,
                med["rss"],
                sum(r.main_cpu for r in rs) / served * 1e6,
                sum(r.other_cpu for r in rs) / served * 1e6,
                sum(r.sink_cpu for r in rs) / served * 1e6,
            ]
        )
    print_table(
        title,
        [
            "mode",
            "req/s",
            "p50 ms",
            "p99 ms",
            "errors",
            "received/accepted",
            "% received",
            "worker RSS MiB",
            "request thread CPU us/req",
            "other threads CPU us/req",
            "sink CPU us/req",
        ],
        rows,
    )
    return medians


def seed_options(
    description: str, modes: dict[str, str], default: list[str], default_help: str
) -> argparse.ArgumentParser:
    """The options a seed-scenario bench shares: --seconds, --runs, --modes, --no-wrk, --smoke."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--seconds", type=float, default=8.0, help="load length per run (8)")
    parser.add_argument("--runs", type=int, default=3, help="interleaved runs per mode (3)")
    parser.add_argument(
        "--modes",
        default=",".join(default),
        help=f"comma-separated, from {', '.join(modes)} (default: {default_help})",
    )
    parser.add_argument("--no-wrk", action="store_true", help="use the bundled generator only")
    parser.add_argument("--smoke", action="store_true", help="1 s per run, 1 run")
    return parser


def chosen_modes(
    parser: argparse.ArgumentParser, args: argparse.Namespace, modes: dict[str, str]
) -> list[str]:
    """The modes ``--modes`` names (an unknown one ends the command); applies ``--smoke``."""
    if args.smoke:
        args.seconds, args.runs = 1.0, 1
    chosen = [m for m in args.modes.split(",") if m]
    unknown = set(chosen) - set(modes)
    if unknown:
        parser.error(f"unknown modes: {sorted(unknown)}")
    return chosen


def main(argv: list[str] | None = None) -> int:
    parser = seed_options("gunicorn seed scenario", MODES, DEFAULT_MODES, "all")
    parser.add_argument("--rate", type=float, default=300.0, help="fixed rate (300 req/s)")
    parser.add_argument(
        "--loads",
        default="saturation,fixed rate",
        help="comma-separated, from: saturation, fixed rate (default: both)",
    )
    args = parser.parse_args(argv)
    modes = chosen_modes(parser, args, MODES)
    loads = [x.strip() for x in args.loads.split(",") if x.strip()]
    if set(loads) - {"saturation", "fixed rate"}:
        parser.error(f"unknown loads: {sorted(set(loads) - {'saturation', 'fixed rate'})}")
    wrk = None if args.no_wrk else ensure_wrk()

    print("# seed scenario (gunicorn, 2 sync workers, sink answering after 100 ms)")
    print(f"machine: {machine()}")
    print(
        f"{args.seconds:g} s per run, {args.runs} interleaved run(s) per mode; saturation load: "
        f"{'wrk -c8' if wrk else 'bundled closed-loop generator, 8 connections'}; fixed rate: "
        f"{args.rate:g} req/s (bundled open-loop generator)"
    )
    results: dict[str, dict[str, list[Run]]] = {}
    for load in ("saturation", "fixed rate"):
        runs: dict[str, list[Run]] = {m: [] for m in MODES}
        results[load] = runs
        if load not in loads:
            continue
        for _ in range(args.runs):
            for mode in modes:
                runs[mode].append(one_run(mode, load, args.seconds, wrk, args.rate))
    sat = fixed = {}
    if "saturation" in loads:
        sat = table("saturation (closed loop, 8 connections)", results["saturation"])
    if "fixed rate" in loads:
        fixed = table(f"fixed rate {args.rate:g} req/s", results["fixed rate"])

    print("\n### targets (ratios from this run)\n")
    if {"asyncbridge", "naive"} <= sat.keys():
        target_line(
            "saturation: asyncbridge / naive req/s",
            sat["asyncbridge"]["rps"] / sat["naive"]["rps"],
            ">=",
            1.0,
            "medians",
        )
    if {"asyncbridge", "thread"} <= sat.keys():
        target_line(
            "saturation: asyncbridge / thread per call req/s",
            sat["asyncbridge"]["rps"] / sat["thread"]["rps"],
            ">=",
            3.5,
            "medians",
        )
    for load, runs in results.items():
        rs = runs["asyncbridge"]
        if rs:
            accepted = sum(r.accepted for r in rs)
            received = sum(r.received for r in rs)
            target_line(
                f"{load}: asyncbridge notifications received / accepted (%)",
                100 * received / accepted if accepted else float("nan"),
                ">=",
                100,
                f"{received}/{accepted}",
            )
    if {"asyncbridge", "ceiling"} <= fixed.keys():
        for q in ("p50", "p99"):
            target_line(
                f"fixed rate: asyncbridge / ceiling {q}",
                fixed["asyncbridge"][q] / fixed["ceiling"][q],
                "<=",
                1.5,
                "medians",
            )
        if "thread" in fixed:
            print(
                f"(thread per call / ceiling p50: "
                f"{fixed['thread']['p50'] / fixed['ceiling']['p50']:.2f})"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
