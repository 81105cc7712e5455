"""Nothing accepted disappears uncounted: the accounting invariant and the shutdown report."""

from __future__ import annotations

import asyncio

import asyncbridge


async def quick() -> None:
    await asyncio.sleep(0)


async def broken() -> None:
    raise ConnectionError("push service refused")


async def stuck() -> None:
    await asyncio.sleep(60)


def main() -> None:
    results = [
        asyncbridge.run_soon(quick()),
        asyncbridge.run_soon(broken()),
        asyncbridge.run_soon(stuck()),
    ]
    assert asyncbridge.default_bridge().drain(timeout=0.2) is False  # stuck() is still running
    report = asyncbridge.shutdown(timeout=0.1)  # cancels stuck() at the deadline
    s = report.stats
    assert results == [True, True, True]
    assert s.accepted == s.completed + s.failed + s.timed_out + s.cancelled + s.pending + s.running
    assert (s.completed, s.failed, s.cancelled) == (1, 1, 1)
    assert report.cancelled_names == ("stuck",) and not report.clean
    assert asyncbridge.run_soon(quick()) is False  # after shutdown: dropped, counted
    assert asyncbridge.stats().dropped == {"full": 0, "closed": 1}
    print(report)


if __name__ == "__main__":
    main()
