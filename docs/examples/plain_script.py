"""A plain script (a cron job, a CLI, a dev server): no server hooks, just start and drain.

Run it with ``python docs/examples/plain_script.py``. The loop starts on the first ``run_soon``;
``shutdown`` at the end drains it. ``install_signal_handlers`` makes Ctrl-C and SIGTERM drain too.
"""

from __future__ import annotations

import asyncio
import logging

import asyncbridge


async def send_receipt(order_id: int) -> None:
    await asyncio.sleep(0.01)  # stands in for an HTTP call
    print(f"receipt sent for order {order_id}")


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    asyncbridge.install_signal_handlers()  # SIGINT/SIGTERM: drain, then the old behaviour
    for order_id in range(3):
        asyncbridge.run_soon(send_receipt(order_id))
    report = asyncbridge.shutdown(timeout=5)  # also logged on the "asyncbridge" logger
    assert report.clean and report.stats.completed == 3, report


if __name__ == "__main__":
    main()
