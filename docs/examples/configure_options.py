"""Every option, set in code. Each can also come from the environment as ASYNCBRIDGE_<NAME>.

Call ``configure`` once at import time of the app (before the first ``run_soon`` is cheapest, but
any time works: options take effect at once, ``loop_factory`` at the next loop start).
"""

from __future__ import annotations

import asyncio
import logging

import asyncbridge

log = logging.getLogger("myapp")


def count_error(exc: BaseException, name: str) -> None:
    """Runs on the loop for each failed or timed-out run_soon coroutine."""
    log.warning("background job %s failed: %r", name, exc)


def count_drop(name: str, reason: str) -> None:
    """Runs in the caller's thread for each refused coroutine; reason is "full" or "closed"."""
    log.warning("background job %s dropped: %s", name, reason)


asyncbridge.configure(
    max_pending=10_000,  # accepted but unfinished coroutines, at most
    max_concurrency=100,  # running at once; the rest wait in order
    on_full="drop",  # or "raise" (BacklogFull) or "block" (wait up to block_timeout)
    block_timeout=1.0,  # with on_full="block", the longest a caller waits for room
    drain_timeout=10.0,  # default shutdown deadline
    task_timeout=30.0,  # a coroutine running longer is cancelled and counted as timed out
    log_interval=10.0,  # after the first of a kind, failures and refusals logged once per interval
    loop_factory=None,  # e.g. uvloop.new_event_loop
    on_error=count_error,  # called on the loop for each failed or timed-out run_soon coroutine
    on_drop=count_drop,  # called in the caller's thread for each refused coroutine
    stall_warning=1.0,  # warn when the loop has had no turn for this long; None: no watchdog
    status_dir=None,  # where each process publishes its counts; None: PROMETHEUS_MULTIPROC_DIR
)


async def slow_job() -> None:
    await asyncio.sleep(60)


def main() -> None:
    asyncbridge.configure(task_timeout=0.05)
    asyncbridge.run_soon(slow_job())
    assert asyncbridge.default_bridge().drain(timeout=5)
    print(asyncbridge.stats())
    assert asyncbridge.stats().timed_out == 1
    asyncbridge.shutdown()


if __name__ == "__main__":
    main()
