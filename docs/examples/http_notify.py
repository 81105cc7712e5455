"""Post notifications through the shared, pooled aiohttp session (``asyncbridge-loop[aiohttp]``).

Run it against any HTTP endpoint: ``PUSH_URL=http://127.0.0.1:8080/notify python http_notify.py``.
"""

from __future__ import annotations

import os

import asyncbridge
import asyncbridge.aiohttp

PUSH_URL = os.environ.get("PUSH_URL", "http://127.0.0.1:8080/notify")


async def notify(user_id: int) -> None:
    # One ClientSession per process, created on first use, closed after the drain at shutdown.
    await asyncbridge.aiohttp.post_json(PUSH_URL, {"id": f"user-{user_id}", "user": user_id})


def main() -> None:
    for user_id in range(3):
        asyncbridge.run_soon(notify(user_id))
    report = asyncbridge.shutdown(timeout=10)
    print(report)
    assert report.stats.completed == 3, report


if __name__ == "__main__":
    main()
