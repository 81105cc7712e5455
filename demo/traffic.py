"""A traffic generator: tracked hits sent to the demo app, spread over a few paths.

``python -m demo.traffic --url http://127.0.0.1:8000 -n 200 --rate 50`` sends 200 hits at about 50
a second (``--rate 0``: as fast as the connections allow).
"""

from __future__ import annotations

import argparse
import collections
import http.client
import json
import random
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["PATHS", "Result", "send_hits"]

# Weighted like a small site: the landing page most, the sign-up page least.
PATHS = {"/": 8, "/pricing": 5, "/docs": 4, "/blog": 3, "/signup": 1}


@dataclass
class Result:
    """What a run of the generator did."""

    sent: int = 0
    accepted: int = 0  # answered 202 with queued=true
    failed: int = 0  # connection errors or other answers
    by_path: dict[str, int] = field(default_factory=dict)
    elapsed: float = 0.0
    # Why requests failed: a short reason each, counted; and when, in seconds into the run.
    errors: collections.Counter[str] = field(default_factory=collections.Counter)
    first_error_at: float | None = None
    last_error_at: float | None = None

    def describe_errors(self) -> str:
        """The failures in one line, e.g. ``2 connection refused, first 3.1 s into the run``."""
        if not self.errors:
            return "no failures"
        reasons = ", ".join(f"{n} {why}" for why, n in self.errors.most_common())
        first, last = self.first_error_at or 0.0, self.last_error_at or 0.0
        when = f"{first:.1f} s" if last - first < 0.05 else f"{first:.1f}-{last:.1f} s"
        return f"{reasons}; {when} into the traffic"


def _pick_paths(n: int, seed: int | None) -> list[str]:
    rng = random.Random(seed)
    return rng.choices(list(PATHS), weights=list(PATHS.values()), k=n)


def send_hits(
    url: str,
    n: int,
    *,
    rate: float = 0.0,
    connections: int = 4,
    seed: int | None = None,
    stop: threading.Event | None = None,
    progress: Callable[[Result], None] | None = None,
) -> Result:
    """Send ``n`` tracked hits to the app at ``url`` and wait for every answer.

    Args:
        url: The app's base URL, e.g. ``http://127.0.0.1:8000``.
        n: How many hits.
        rate: Hits per second overall; 0 for as fast as possible.
        connections: Parallel keep-alive connections.
        seed: Makes the choice of paths repeatable.
        stop: Set it to stop early (hits not yet sent are not sent).
        progress: Called about once a second with the result so far.

    Returns:
        The counts; ``accepted`` hits were handed to asyncbridge by the app.
    """
    parts = urllib.parse.urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    paths = _pick_paths(n, seed)
    result = Result()
    lock = threading.Lock()
    started = time.monotonic()
    interval = connections / rate if rate > 0 else 0.0
    stop = stop or threading.Event()

    def worker(mine: list[str]) -> None:
        conn = http.client.HTTPConnection(host, port, timeout=10)
        next_at = time.monotonic()
        try:
            for path in mine:
                if stop.is_set():
                    return
                if interval:
                    delay = next_at - time.monotonic()
                    if delay > 0 and stop.wait(delay):
                        return
                    next_at += interval
                error = _one(conn, path)
                with lock:
                    result.sent += 1
                    if error is None:
                        result.accepted += 1
                        result.by_path[path] = result.by_path.get(path, 0) + 1
                    else:
                        result.failed += 1
                        result.errors[f"{error} (POST {url.rstrip('/')}/track)"] += 1
                        at = time.monotonic() - started
                        if result.first_error_at is None:
                            result.first_error_at = at
                        result.last_error_at = at
        finally:
            conn.close()

    threads = [
        threading.Thread(target=worker, args=(paths[i::connections],), daemon=True)
        for i in range(max(1, connections))
    ]
    for t in threads:
        t.start()
    last = time.monotonic()
    while any(t.is_alive() for t in threads):
        for t in threads:
            t.join(0.2)
        if progress is not None and time.monotonic() - last >= 1.0:
            last = time.monotonic()
            with lock:
                progress(result)
    result.elapsed = time.monotonic() - started
    return result


def _one(conn: http.client.HTTPConnection, path: str) -> str | None:
    """Track one hit; None when the app accepted it, else why not, in a few words."""
    # No retry: a request that reached the app may have been tracked even if its answer was
    # lost, and the demo's counts must stay exact.
    try:
        conn.request("POST", "/track?" + urllib.parse.urlencode({"path": path}))
        response = conn.getresponse()
        body = response.read()
    except (OSError, http.client.HTTPException) as exc:
        conn.close()
        return _why(exc)
    try:
        answer = json.loads(body)
    except ValueError:
        answer = None
    if response.status == 202 and isinstance(answer, dict) and answer.get("queued") is True:
        return None
    if response.status == 202:
        return "answered 202 but not queued (asyncbridge's backlog full, or it was stopping)"
    detail = answer.get("error") if isinstance(answer, dict) else None
    return f"HTTP {response.status}" + (f": {detail}" if detail else "")


def _why(exc: BaseException) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, ConnectionResetError):
        return "connection reset"
    if isinstance(exc, http.client.RemoteDisconnected):
        return "connection closed without an answer"
    if isinstance(exc, TimeoutError):
        return "no answer within 10 s"
    return f"{type(exc).__name__}: {exc}"


def main(argv: list[str] | None = None) -> None:
    """Command line: ``python -m demo.traffic --url URL -n N [--rate R]``."""
    parser = argparse.ArgumentParser(
        prog="python -m demo.traffic",
        description=(__doc__ or "").replace("``", ""),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="the demo app's base URL")
    parser.add_argument("-n", type=int, default=100, help="how many hits (default 100)")
    parser.add_argument("--rate", type=float, default=20.0, help="hits per second; 0: no limit")
    parser.add_argument("--connections", type=int, default=4, help="parallel connections")
    args = parser.parse_args(argv)
    result = send_hits(args.url, args.n, rate=args.rate, connections=args.connections)
    print(
        f"sent {result.sent} hits in {result.elapsed:.1f}s: {result.accepted} accepted, "
        f"{result.failed} failed; by path: {result.by_path}"
    )
    if result.failed:
        print(f"failures: {result.describe_errors()}")
    raise SystemExit(0 if result.failed == 0 else 1)


if __name__ == "__main__":
    main()
