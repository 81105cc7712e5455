"""Bad input to run_soon/submit: a TypeError that names what was passed and how to fix it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from asyncbridge import Bridge

from .helpers import fresh_bridge


async def notify() -> None:
    pass


async def ticks() -> AsyncIterator[int]:
    yield 1


def plain() -> None:
    pass


class Awaitable:
    def __await__(self) -> Any:
        yield


def _future() -> object:
    loop = asyncio.new_event_loop()
    try:
        return loop.create_future()
    finally:
        loop.close()


CASES: list[tuple[str, Callable[[], object], str]] = [
    (
        "coroutine function",
        lambda: notify,
        r"coroutine function notify; did you forget to call it\? Write run_soon\(notify\(...\)\)",
    ),
    ("plain function", lambda: plain, "got the function plain, which is not `async def`"),
    ("None", lambda: None, "got None"),
    ("asyncio future", _future, "got an asyncio Future"),
    ("async generator", ticks, "got the async generator ticks"),
    ("awaitable", Awaitable, "got the awaitable Awaitable, which is not a coroutine"),
    ("int", lambda: 3, "expected a coroutine object, got int"),
]


@pytest.mark.parametrize(("what", "make", "match"), CASES, ids=[c[0] for c in CASES])
def test_run_soon_rejects_non_coroutines_with_a_helpful_type_error(
    what: str, make: Callable[[], object], match: str
) -> None:
    obj = make()
    with fresh_bridge() as bridge:
        with pytest.raises(TypeError, match=match):
            bridge.run_soon(obj)  # type: ignore[arg-type]
        assert bridge.stats().accepted == 0
    if hasattr(obj, "aclose"):
        asyncio.run(obj.aclose())


def test_submit_rejects_a_coroutine_function() -> None:
    with fresh_bridge() as bridge, pytest.raises(TypeError, match=r"Write submit\(notify\(...\)\)"):
        bridge.submit(notify)  # type: ignore[arg-type]


def test_run_rejects_none() -> None:
    bridge = Bridge()
    with pytest.raises(TypeError, match="got None"):
        bridge.run(None)  # type: ignore[arg-type]
    bridge.shutdown(1)
