"""Memory: RSS per 10,000 pending jobs, and RSS over time against a sink that never answers.

Run: ``.venv/bin/python bench/memory.py`` (``--smoke`` for a few seconds; ``--seconds`` sets the
length of the second part, 60 by default).

Part 1 parks the loop (blocked in ``threading.Event.wait`` inside a callback) and hands off N jobs,
each a coroutine holding a small notification payload; every row runs in a fresh subprocess so
that freed memory of one row does not hide the growth of the next.

Part 2 hands off 500 notifications per second, for ``--seconds``, to a sink (its own process)
that accepts connections and never answers. The coroutines pile up on the loop; the bridge must
hold RSS flat by admitting at most ``max_pending``, running at most ``max_concurrency``, and
counting what it drops.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any

from _common import machine, park_loop, print_table, rss_kib, target_line

import asyncbridge
import asyncbridge.aiohttp
from asyncbridge import _bridge


async def notify(url: str, payload: dict[str, Any]) -> None:
    """One notification, as an app would send it."""
    await asyncbridge.aiohttp.post_json(url, payload)


def _payload(i: int) -> dict[str, Any]:
    return {"id": i, "user": f"user-{i}", "event": "order.created"}


# -- part 1: RSS per pending job --------------------------------------------------------------


def child(row: str, n: int) -> None:
    """Measure one row in this (fresh) process; prints KiB before and after the hand-offs."""
    url = "http://127.0.0.1:9/never"  # never contacted: the jobs are closed before they run
    kept: list[Any] = []
    if row == "floor":
        before = rss_kib()
        kept.extend(notify(url, _payload(i)) for i in range(n))
        after = rss_kib()
        for coro in kept:
            coro.close()
        print(json.dumps({"before": before, "after": after}))
        return
    loop: asyncio.AbstractEventLoop
    if row in ("run_soon", "submit"):
        # The loop is parked on purpose here; the core's back-off for a starved loop would only
        # make each hand-off sleep (bench/handoff.py's caller-only regime does the same).
        _bridge._BACKLOG_BEFORE_BACKOFF = sys.maxsize
        bridge = asyncbridge.Bridge(max_pending=n + 10)
        loop = bridge.get_loop()
        hand_off: Callable[[Coroutine[Any, Any, None]], object] = getattr(bridge, row)
    else:
        loop = asyncio.new_event_loop()
        threading.Thread(target=loop.run_forever, daemon=True).start()
        if row == "naive":

            def hand_off(coro: Coroutine[Any, Any, None]) -> object:
                return loop.call_soon_threadsafe(loop.create_task, coro)

        else:

            def hand_off(coro: Coroutine[Any, Any, None]) -> object:
                return asyncio.run_coroutine_threadsafe(coro, loop)

    park_loop(loop)
    before = rss_kib()
    kept.extend(hand_off(notify(url, _payload(i))) for i in range(n))
    after = rss_kib()
    # Leave without running or closing anything: the measurement is done, the process ends.
    sys.stdout.write(json.dumps({"before": before, "after": after}) + "\n")
    sys.stdout.flush()
    os._exit(0)


ROWS_1 = {
    "floor": "floor: the coroutine objects alone",
    "run_soon": "asyncbridge.run_soon",
    "submit": "asyncbridge.submit",
    "naive": "call_soon_threadsafe(create_task, coro) (naive)",
    "rcts": "asyncio.run_coroutine_threadsafe",
}


def part1(n: int, rounds: int) -> list[list[object]]:
    per10k: dict[str, list[float]] = {row: [] for row in ROWS_1}
    for _ in range(rounds):
        for row in ROWS_1:
            out = subprocess.run(
                [sys.executable, __file__, "--child", row, "--jobs", str(n)],
                capture_output=True,
                text=True,
                timeout=120,
                check=True,
            ).stdout
            result = json.loads(out.strip().splitlines()[-1])
            per10k[row].append((result["after"] - result["before"]) / n * 10_000 / 1024)
    floor = statistics.median(per10k["floor"])
    return [
        [label, statistics.median(per10k[row]), statistics.median(per10k[row]) / floor]
        for row, label in ROWS_1.items()
    ]


# -- part 2: RSS over time against a sink that never answers ----------------------------------

_SILENT_SINK = """
import asyncio, sys
async def main():
    held = []
    async def take(reader, writer):
        held.append(writer)  # keep the connection open, read nothing back, answer nothing
        await asyncio.Event().wait()
    server = await asyncio.start_server(take, "127.0.0.1", 0, backlog=1024)
    print(server.sockets[0].getsockname()[1], flush=True)
    await asyncio.Event().wait()
asyncio.run(main())
"""


class _QuietFailures(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("asyncbridge task ")


def part2(
    seconds: float, rate: float, max_pending: int, max_concurrency: int
) -> tuple[list[list[object]], dict[str, Any]]:
    sink = subprocess.Popen([sys.executable, "-c", _SILENT_SINK], stdout=subprocess.PIPE, text=True)
    # Each timed-out request is logged with its traceback; the table counts them as "failed".
    quiet = _QuietFailures()
    logging.getLogger("asyncbridge").addFilter(quiet)
    try:
        assert sink.stdout is not None
        port = int(sink.stdout.readline())
        url = f"http://127.0.0.1:{port}/notify"
        bridge = asyncbridge.Bridge(max_pending=max_pending, max_concurrency=max_concurrency)
        bridge.start()
        samples: list[list[object]] = []
        sent = 0
        start = time.monotonic()
        next_send = start
        next_sample = start
        while True:
            now = time.monotonic()
            if now >= next_sample:
                s = bridge.stats()
                samples.append(
                    [
                        round(now - start, 1),
                        rss_kib() / 1024,
                        sent,
                        s.accepted,
                        s.pending,
                        s.running,
                        s.failed,
                        s.dropped["full"],
                    ]
                )
                next_sample += max(1.0, seconds / 20)
            if now - start >= seconds:
                break
            if now >= next_send:
                bridge.run_soon(notify(url, _payload(sent)))
                sent += 1
                next_send += 1 / rate
            else:
                time.sleep(min(next_send, next_sample) - now)
        final = bridge.stats()
        report = bridge.shutdown(2)
    finally:
        logging.getLogger("asyncbridge").removeFilter(quiet)
        sink.kill()
        sink.wait(10)
    s = report.stats
    outcome = {
        "sent": sent,
        "accepted": s.accepted,
        "dropped_full": s.dropped["full"],
        "completed": s.completed,
        "failed": s.failed,
        "cancelled": s.cancelled,
        "max_pending_seen": max(int(str(r[4])) + int(str(r[5])) for r in samples),
        "final_before_shutdown": final,
        "report": str(report),
    }
    return samples, outcome


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="bridge memory")
    parser.add_argument("--jobs", type=int, default=100_000, help="pending jobs in part 1")
    parser.add_argument("--rounds", type=int, default=3, help="part 1 rounds; medians shown")
    parser.add_argument("--seconds", type=float, default=60.0, help="length of part 2 (60)")
    parser.add_argument("--rate", type=float, default=500.0, help="hand-offs per second (500)")
    parser.add_argument("--max-pending", type=int, default=2_000, help="bridge max_pending")
    parser.add_argument("--max-concurrency", type=int, default=100, help="bridge max_concurrency")
    parser.add_argument("--smoke", action="store_true", help="a few seconds in all")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.child, args.jobs)
        return 0
    if args.smoke:
        args.jobs, args.rounds, args.seconds, args.max_pending = 10_000, 1, 3.0, 500

    print("# memory")
    print(f"machine: {machine()}")
    print_table(
        f"RSS per 10,000 pending jobs (loop parked; {args.jobs} jobs, median of {args.rounds})",
        ["row", "MiB per 10k pending", "/ floor"],
        part1(args.jobs, args.rounds),
    )
    samples, outcome = part2(args.seconds, args.rate, args.max_pending, args.max_concurrency)
    print_table(
        f"RSS over {args.seconds:g} s at {args.rate:g}/s to a sink that never answers "
        f"(max_pending={args.max_pending}, max_concurrency={args.max_concurrency})",
        ["t s", "RSS MiB", "handed off", "accepted", "pending", "running", "failed", "dropped"],
        samples,
    )
    print(f"\nshutdown: {outcome['report']}")
    print(
        f"handed off {outcome['sent']} = accepted {outcome['accepted']} + dropped (full) "
        f"{outcome['dropped_full']}"
    )
    rss = [float(str(r[1])) for r in samples]
    settled = rss[len(rss) // 4 :]
    growth = max(settled) - min(settled)
    print("\n### targets\n")
    target_line(
        "RSS growth after the first quarter (MiB)",
        growth,
        "<=",
        5,
        f"RSS {min(settled):.1f}..{max(settled):.1f} MiB",
    )
    target_line(
        "pending + running never above max_pending",
        float(outcome["max_pending_seen"]),
        "<=",
        args.max_pending,
        "sampled",
    )
    target_line(
        "hand-offs unaccounted for (sent - accepted - dropped)",
        float(outcome["sent"] - outcome["accepted"] - outcome["dropped_full"]),
        "<=",
        0,
        "every refusal counted",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
