"""Fire coroutines from synchronous code, then drain them and print the shutdown report.

Run it with ``.venv/bin/python examples/fire_and_forget.py``. It is what a request handler does,
minus the web server: each ``run_soon`` returns at once, the work happens on the background loop,
and ``shutdown`` drains what is left before the process exits.
"""

from __future__ import annotations

import asyncio
import logging
import time

import asyncbridge


async def notify(event_id: int) -> None:
    """Stands in for an HTTP call to a push service: 50 ms of waiting on I/O."""
    await asyncio.sleep(0.05)
    if event_id % 50 == 49:
        raise ConnectionError(f"push service refused event {event_id}")


def handle_request(event_id: int) -> None:
    """A synchronous request handler: hands the notification off and returns."""
    asyncbridge.run_soon(notify(event_id))


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    started = time.perf_counter()
    for event_id in range(200):
        handle_request(event_id)
    handed_off = time.perf_counter() - started
    print(f"handed off 200 notifications in {handed_off * 1e3:.2f} ms (the request's whole cost)")
    print("stats right after:", asyncbridge.stats())
    report = asyncbridge.shutdown(timeout=5)
    print("shutdown report:", report)
    s = report.stats
    assert s.accepted == s.completed + s.failed + s.timed_out + s.cancelled + s.pending + s.running


if __name__ == "__main__":
    main()
