"""asyncbridge.retrying: backoff, Retry-After, the budget, the drain deadline, the lane's slot."""

from __future__ import annotations

import asyncio
import email.utils
import logging
import math
import threading
import time
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest
from multidict import CIMultiDict, CIMultiDictProxy

import asyncbridge
from asyncbridge import _retry
from asyncbridge._retry import BASE, CAP, backoff, retry_after, worth_retrying

from .helpers import assert_invariant, fresh_bridge


class Unavailable(Exception):
    """Like aiohttp's ClientResponseError: a status and headers."""

    def __init__(self, status: int = 503, retry_after: str | None = None) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status
        self.headers: dict[str, str] = {} if retry_after is None else {"Retry-After": retry_after}


@pytest.fixture
def quick_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    """Backoff of at most a few ms, so that tests about counts do not wait for the real one."""
    monkeypatch.setattr(_retry, "BASE", 0.002)


class Flaky:
    """An async callable that fails ``failures`` times (with ``exc``), then returns ``result``."""

    def __init__(self, failures: int, exc: BaseException | None = None, result: object = "ok"):
        self.failures = failures
        self.exc = exc if exc is not None else ConnectionRefusedError("refused")
        self.result = result
        self.calls: list[float] = []
        self._lock = threading.Lock()

    async def __call__(self, *args: Any, **kwargs: Any) -> object:
        with self._lock:
            self.calls.append(time.monotonic())
            n = len(self.calls)
        if n <= self.failures:
            raise self.exc
        return self.result


# -- the pure parts -----------------------------------------------------------------------------


def test_backoff_is_full_jitter_under_an_exponential_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    for retry in range(1, 12):
        bound = min(CAP, BASE * 2 ** (retry - 1))
        samples = [backoff(retry) for _ in range(2000)]
        assert all(0 <= s < bound for s in samples), retry
        # Full jitter: spread over the whole range, not clustered at the bound.
        assert min(samples) < 0.05 * bound and max(samples) > 0.95 * bound
    monkeypatch.setattr(_retry, "_random", lambda: 0.5)
    assert [backoff(n) for n in (1, 2, 3, 4)] == [0.1, 0.2, 0.4, 0.8]
    assert backoff(60) == CAP / 2 and backoff(10_000) == CAP / 2


def test_retry_after_reads_seconds_and_http_dates() -> None:
    assert retry_after(Unavailable(retry_after="3")) == 3.0
    assert retry_after(Unavailable(retry_after=" 1.5 ")) == 1.5
    assert retry_after(Unavailable(retry_after="-4")) == 0.0
    soon = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert 28 <= retry_after(Unavailable(retry_after=soon)) <= 30  # type: ignore[operator]
    past = email.utils.formatdate(time.time() - 30, usegmt=True)
    assert retry_after(Unavailable(retry_after=past)) == 0.0
    assert retry_after(Unavailable(retry_after="soon")) is None
    assert retry_after(Unavailable(retry_after="nan")) is None
    assert retry_after(Unavailable()) is None
    assert retry_after(ValueError()) is None
    lower = Unavailable()
    lower.headers = {"retry-after": "2"}
    assert retry_after(lower) == 2.0


def test_retry_after_reads_aiohttp_client_response_error_headers() -> None:
    headers = CIMultiDictProxy(CIMultiDict({"retry-after": "7"}))
    exc = aiohttp.ClientResponseError(
        request_info=None,  # type: ignore[arg-type]
        history=(),
        status=503,
        headers=headers,
    )
    assert retry_after(exc) == 7.0
    assert worth_retrying(exc)


def test_what_is_worth_retrying_by_default() -> None:
    assert worth_retrying(ConnectionRefusedError())
    assert worth_retrying(ConnectionResetError())
    assert worth_retrying(TimeoutError())
    assert worth_retrying(aiohttp.ServerDisconnectedError())
    assert worth_retrying(aiohttp.ServerTimeoutError())
    assert worth_retrying(aiohttp.ClientConnectionError())
    for status in (429, 500, 502, 503, 504, 599):
        assert worth_retrying(Unavailable(status)), status
    for status in (400, 401, 403, 404, 409, 422):
        assert not worth_retrying(Unavailable(status)), status
    assert not worth_retrying(ValueError())
    assert not worth_retrying(aiohttp.ClientPayloadError())
    assert worth_retrying(Unavailable(409), statuses={409})
    assert not worth_retrying(Unavailable(503), statuses={429})


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"attempts": 0}, ValueError),
        ({"attempts": 2.0}, TypeError),
        ({"attempts": True}, TypeError),
        ({"budget": -1}, ValueError),
        ({"budget": math.nan}, ValueError),
        ({"budget": math.inf}, ValueError),
        ({"budget": "30"}, TypeError),
    ],
)
def test_bad_arguments_fail_at_once(kwargs: dict[str, Any], error: type[Exception]) -> None:
    with pytest.raises(error):
        asyncbridge.retrying(Flaky(0), **kwargs).close()


def test_a_coroutine_instead_of_the_function_is_refused_and_closed() -> None:
    coro = Flaky(0)()
    with pytest.raises(TypeError, match="not a coroutine"):
        asyncbridge.retrying(coro).close()  # type: ignore[arg-type]
    coro.close()
    with pytest.raises(TypeError, match="async function"):
        asyncbridge.retrying(42).close()  # type: ignore[arg-type]


def test_the_job_is_named_after_the_function() -> None:
    async def post_json(url: str) -> None:
        pass

    coro = asyncbridge.retrying(post_json, "http://127.0.0.1:9/")
    try:
        assert coro.__qualname__.endswith("post_json")  # type: ignore[attr-defined]
    finally:
        coro.close()


def test_outside_a_bridge_it_retries_with_plain_sleeps(quick_backoff: None) -> None:
    flaky = Flaky(2)
    result = asyncio.run(asyncbridge.retrying(flaky, "a", attempts=3, budget=5, key="v"))
    assert result == "ok" and len(flaky.calls) == 3


def test_arguments_reach_the_function_and_the_last_exception_is_raised(
    quick_backoff: None,
) -> None:
    seen: list[tuple[tuple[Any, ...], dict[str, Any]]] = []

    async def call(*args: Any, **kwargs: Any) -> None:
        seen.append((args, kwargs))
        raise ConnectionResetError(f"try {len(seen)}")

    with pytest.raises(ConnectionResetError, match="try 4"):
        asyncio.run(asyncbridge.retrying(call, 1, 2, attempts=4, timeout=3))
    assert seen == [((1, 2), {"timeout": 3})] * 4


def test_retry_if_decides_alone(quick_backoff: None) -> None:
    flaky = Flaky(2, exc=KeyError("x"))
    assert asyncio.run(asyncbridge.retrying(flaky, retry_if=lambda e: isinstance(e, KeyError)))
    never = Flaky(2)
    with pytest.raises(ConnectionRefusedError):
        asyncio.run(asyncbridge.retrying(never, retry_if=lambda e: False))
    assert len(never.calls) == 1


def test_retry_statuses_replace_the_default_set(quick_backoff: None) -> None:
    conflict = Flaky(1, exc=Unavailable(409))
    assert asyncio.run(asyncbridge.retrying(conflict, retry_statuses={409})) == "ok"
    unavailable = Flaky(1, exc=Unavailable(503))
    with pytest.raises(Unavailable):
        asyncio.run(asyncbridge.retrying(unavailable, retry_statuses={409}))
    assert len(unavailable.calls) == 1


# -- on a bridge --------------------------------------------------------------------------------


@pytest.fixture
def bridge() -> Iterator[asyncbridge.Bridge]:
    with fresh_bridge() as b:
        yield b


def test_counts_are_exact(bridge: asyncbridge.Bridge, quick_backoff: None) -> None:
    recovering = [Flaky(2) for _ in range(20)]
    hopeless = [Flaky(100) for _ in range(5)]
    refused = [Flaky(100, exc=Unavailable(404)) for _ in range(3)]
    for f in recovering:
        assert bridge.run_soon(asyncbridge.retrying(f, attempts=5))
    for f in hopeless:
        assert bridge.run_soon(asyncbridge.retrying(f, attempts=3))
    for f in refused:
        assert bridge.run_soon(asyncbridge.retrying(f, attempts=3))
    assert bridge.drain(30)
    s = bridge.stats()
    assert_invariant(s)
    assert (s.accepted, s.completed, s.failed) == (28, 20, 8)
    assert s.retries == 20 * 2 + 5 * 2 + 0
    assert sum(len(f.calls) for f in recovering + hopeless + refused) == 28 + s.retries
    assert s.lanes["default"].retries == s.retries


def test_retry_after_is_waited_in_full(bridge: asyncbridge.Bridge) -> None:
    flaky = Flaky(1, exc=Unavailable(503, retry_after="0.3"))
    future = bridge.submit(asyncbridge.retrying(flaky))
    assert future.result(10) == "ok"
    gap = flaky.calls[1] - flaky.calls[0]
    assert 0.3 <= gap  # at least what the server asked; jitter on top
    assert bridge.stats().retries == 1


def test_the_budget_stops_retries(
    bridge: asyncbridge.Bridge, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_retry, "BASE", 0.05)
    monkeypatch.setattr(_retry, "CAP", 0.05)
    hopeless = Flaky(10_000)
    future = bridge.submit(asyncbridge.retrying(hopeless, attempts=10_000, budget=0.4))
    with pytest.raises(ConnectionRefusedError):
        future.result(10)
    starts = [t - hopeless.calls[0] for t in hopeless.calls]
    assert starts[-1] <= 0.4  # no try starts past the budget
    assert len(starts) >= 2  # each wait is under 0.05 s: several fit in 0.4 s
    s = bridge.stats()
    assert (s.failed, s.retries) == (1, len(starts) - 1)


def test_a_wait_that_ends_past_the_budget_starts_no_try(
    bridge: asyncbridge.Bridge, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The wait is due inside the budget (0.05 s of 0.3 s), but the timer or the lane's slot comes
    # back late, past it: the budget is spent, and the try that was due does not start.
    monkeypatch.setattr(_retry, "_random", lambda: 1.0)
    monkeypatch.setattr(_retry, "BASE", 0.05)
    rest = _retry._rest

    async def late_rest(lane: Any, rt: Any, wake: float, took: float) -> bool:
        woke = await rest(lane, rt, wake, took)
        await asyncio.sleep(0.4)  # as a loaded machine's late timer
        return woke

    monkeypatch.setattr(_retry, "_rest", late_rest)
    hopeless = Flaky(10)
    future = bridge.submit(asyncbridge.retrying(hopeless, attempts=10, budget=0.3))
    with pytest.raises(ConnectionRefusedError):
        future.result(10)
    assert len(hopeless.calls) == 1
    s = bridge.stats()
    assert (s.failed, s.retries) == (1, 0)


def test_a_retry_after_beyond_the_budget_fails_at_once(bridge: asyncbridge.Bridge) -> None:
    flaky = Flaky(1, exc=Unavailable(429, retry_after="60"))
    future = bridge.submit(asyncbridge.retrying(flaky, budget=5))
    with pytest.raises(Unavailable):
        future.result(10)
    assert len(flaky.calls) == 1
    assert bridge.stats().retries == 0


def test_a_retry_whose_slot_comes_back_too_late_for_the_drain_fails_with_its_own_error() -> None:
    # The retry sleeps without its slot; a drain begins while it waits for the slot back, which
    # comes back 1.1 s into a 1.5 s drain: a 0.6 s try cannot end in time, so none starts, and
    # the job fails with its own exception, not cancelled at the deadline.
    calls: list[float] = []
    first = threading.Event()

    async def slow_failing() -> None:
        calls.append(time.monotonic())
        first.set()
        await asyncio.sleep(0.6)
        raise Unavailable(503, retry_after="0.05")

    with fresh_bridge() as bridge:
        lane = bridge.lane("one-at-a-time", max_concurrency=1)
        future = lane.submit(asyncbridge.retrying(slow_failing, attempts=5, budget=30))
        assert first.wait(5)
        time.sleep(0.65)  # the first try failed; the retry sleeps 0.05 s without its slot
        assert lane.run_soon(asyncio.sleep(1.2))  # takes the slot first
        time.sleep(0.1)  # the retry now waits for its slot back
        report = bridge.shutdown(1.5, log=False)
        with pytest.raises(Unavailable):
            future.result(0)
    assert len(calls) == 1
    assert report.cancelled_names == ()
    assert (report.stats.failed, report.stats.completed, report.stats.cancelled) == (1, 1, 0)


def test_a_sleeping_retry_holds_no_slot_of_its_lane() -> None:
    order: list[str] = []

    async def quick(name: str) -> None:
        order.append(name)

    with fresh_bridge() as bridge:
        lane = bridge.lane("one-at-a-time", max_concurrency=1)
        flaky = Flaky(1, exc=Unavailable(503, retry_after="0.3"))

        async def first() -> object:
            order.append("first try")
            return await asyncbridge.retrying(flaky)

        done = lane.submit(first())
        assert lane.run_soon(quick("second job"))
        assert lane.run_soon(quick("third job"))
        assert done.result(10) == "ok"
        assert bridge.drain(10)
        # The other jobs ran while the first slept, on the lane's only slot.
        assert order == ["first try", "second job", "third job"]
        assert lane.stats().completed == 3 and lane.stats().retries == 1
        assert bridge.stats().lanes["default"].retries == 0


def test_a_retry_waits_for_a_free_slot_after_its_sleep() -> None:
    active = 0
    most = 0

    async def busy(seconds: float) -> None:
        nonlocal active, most
        active += 1
        most = max(most, active)
        try:
            await asyncio.sleep(seconds)
        finally:
            active -= 1

    flaky = Flaky(1, exc=Unavailable(503, retry_after="0.1"))
    with fresh_bridge() as bridge:
        lane = bridge.lane("pair", max_concurrency=2)
        first = lane.submit(asyncbridge.retrying(flaky))
        deadline = time.monotonic() + 5
        while not flaky.calls and time.monotonic() < deadline:
            time.sleep(0.005)
        for _ in range(3):  # the retry sleeps 0.1 s without its slot: two of these take both
            assert lane.run_soon(busy(0.3))
        assert first.result(10) == "ok"
        assert bridge.drain(10)
        # The retry came back only when a busy job gave a slot up; never more than two ran.
        assert flaky.calls[1] - flaky.calls[0] >= 0.3
        assert most == 2
        assert lane.stats().completed == 4
        st = bridge._rt.lanes["pair"]
        assert st.busy == 0 and not st.returning


def test_a_drain_wakes_a_sleeping_retry_that_cannot_make_the_deadline(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.ERROR, "asyncbridge")
    bridge = asyncbridge.Bridge()
    flaky = Flaky(1, exc=Unavailable(503, retry_after="5"))
    bridge.run_soon(asyncbridge.retrying(flaky, budget=30))
    deadline = time.monotonic() + 5
    while not flaky.calls and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.05)  # the first try failed and the retry sleeps
    report = bridge.shutdown(2)
    s = report.stats
    assert_invariant(s)
    # It failed with the server's error instead of being cancelled at the deadline.
    assert (s.failed, s.cancelled, s.retries) == (1, 0, 0)
    assert report.clean and report.elapsed < 1.5
    assert len(flaky.calls) == 1
    assert any("Unavailable" in r.getMessage() or r.exc_info for r in caplog.records)


def test_a_drain_with_time_to_spare_lets_the_retry_run() -> None:
    bridge = asyncbridge.Bridge()
    flaky = Flaky(1, exc=Unavailable(503, retry_after="0.2"))
    bridge.run_soon(asyncbridge.retrying(flaky))
    deadline = time.monotonic() + 5
    while not flaky.calls and time.monotonic() < deadline:
        time.sleep(0.01)
    report = bridge.shutdown(5)
    assert (report.stats.completed, report.stats.retries) == (1, 1)
    assert report.clean and len(flaky.calls) == 2


def test_a_retry_cancelled_while_asleep_gives_its_slot_back() -> None:
    with fresh_bridge() as bridge:
        lane = bridge.lane("cancel", max_concurrency=1, task_timeout=0.2)
        flaky = Flaky(1, exc=Unavailable(503, retry_after="5"))
        assert lane.run_soon(asyncbridge.retrying(flaky))
        assert bridge.drain(10)
        s = lane.stats()
        assert (s.timed_out, s.retries) == (1, 0)
        st = bridge._rt.lanes["cancel"]
        assert st.busy == 0 and not st.returning
        # The slot is free again: the next job runs.
        assert lane.run(asyncio.sleep(0, "next"), timeout=5) == "next"


def test_a_final_failure_names_the_function(
    bridge: asyncbridge.Bridge, quick_backoff: None, caplog: pytest.LogCaptureFixture
) -> None:
    async def post_json(url: str) -> None:
        raise ConnectionRefusedError("refused")

    caplog.set_level(logging.ERROR, "asyncbridge")
    bridge.run_soon(asyncbridge.retrying(post_json, "http://127.0.0.1:9/", attempts=2))
    assert bridge.drain(10)
    failures = [r for r in caplog.records if "failed" in r.getMessage()]
    assert len(failures) == 1
    assert "post_json" in failures[0].getMessage()
    assert bridge.stats().retries == 1


def test_a_retry_in_a_task_a_job_spawned_still_stops_at_the_drain_deadline() -> None:
    bridge = asyncbridge.Bridge()
    flaky = Flaky(1, exc=Unavailable(503, retry_after="5"))

    async def job() -> object:
        # Its own task: it holds no slot of the lane, but the drain deadline still applies.
        return await asyncio.create_task(asyncbridge.retrying(flaky))

    bridge.run_soon(job())
    deadline = time.monotonic() + 5
    while not flaky.calls and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.05)
    report = bridge.shutdown(2, log=False)
    assert (report.stats.failed, report.stats.cancelled) == (1, 0)
    assert report.clean and report.elapsed < 1.5
    assert report.stats.retries == 0  # it gave up instead of trying again
