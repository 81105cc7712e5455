"""When the caller needs the answer: ``submit`` returns a future, ``run`` blocks for the result.

``run_soon`` is the one for request handlers (fire and forget); these two are for code that
must wait, such as a management command or a startup check.
"""

from __future__ import annotations

import asyncio

import asyncbridge


async def lookup(key: str) -> str:
    await asyncio.sleep(0.01)
    return key.upper()


async def too_slow() -> None:
    await asyncio.sleep(60)


def main() -> None:
    future = asyncbridge.submit(lookup("a"))  # a concurrent.futures.Future
    assert future.result(timeout=5) == "A"

    assert asyncbridge.run(lookup("b"), timeout=5) == "B"

    try:
        asyncbridge.run(too_slow(), timeout=0.05)
    except TimeoutError:
        print("too_slow() was cancelled after 0.05 s")

    report = asyncbridge.shutdown(timeout=5)
    s = report.stats
    assert (s.accepted, s.completed, s.cancelled) == (3, 2, 1), s
    print(report)


if __name__ == "__main__":
    main()
