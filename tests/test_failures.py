"""Failure and drop logs that do not flood (asyncbridge._failures.Summaries)."""

from __future__ import annotations

import asyncio
import logging
import threading

import pytest

from asyncbridge import Bridge
from asyncbridge._failures import Summaries, failure_kind

LOGGER = "asyncbridge.test_failures"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class ClientConnectorError(ConnectionError):
    """Named like aiohttp's, without aiohttp."""


class ClientResponseError(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(f"{status}, message='Service Unavailable'")
        self.status = status
        self.headers: dict[str, str] = {}


def raised(exc: BaseException) -> BaseException:
    """``exc`` with a traceback, as a task's exception has."""
    try:
        raise exc
    except BaseException as caught:
        return caught


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def summaries(clock: FakeClock) -> Summaries:
    return Summaries(10.0, clock=clock, log=logging.getLogger(LOGGER))


def records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == LOGGER]


def test_failure_kind_names_the_type_and_an_http_status() -> None:
    assert failure_kind(ClientResponseError(503)) == "ClientResponseError(503)"
    assert failure_kind(ClientConnectorError("refused")) == "ClientConnectorError"
    assert failure_kind(ValueError("x")) == "ValueError"


def test_ten_thousand_failures_give_two_tracebacks_and_one_summary_line(
    summaries: Summaries, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, LOGGER)
    for i in range(10_000):
        clock.now += 0.0005  # 5 s in all: one window
        if i % 10 == 3:
            summaries.failure("post_json", raised(ClientResponseError(503)))
        else:
            summaries.failure("post_json", raised(ClientConnectorError("refused")))
    summaries.flush(final=True)
    lines = records(caplog)
    assert len(lines) == 3
    first, second, summary = lines
    assert first.getMessage().startswith("asyncbridge task post_json failed (")
    assert first.exc_info is not None and isinstance(first.exc_info[1], ClientConnectorError)
    assert second.exc_info is not None and isinstance(second.exc_info[1], ClientResponseError)
    assert summary.levelno == logging.ERROR and summary.exc_info is None
    assert summary.getMessage() == (
        "asyncbridge task post_json failed 10,000 times in the last 5 s: "
        "ClientConnectorError x9,000, ClientResponseError(503) x1,000"
    )


def test_one_summary_line_per_interval_per_name(
    summaries: Summaries, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, LOGGER)
    # 35 s of failures, 100 per second, of two coroutines.
    for _ in range(3500):
        clock.now += 0.01
        summaries.failure("post_json", raised(ClientConnectorError("refused")))
        summaries.failure("send_webhook", raised(TimeoutError()))
    summaries.flush(final=True)
    messages = [r.getMessage() for r in records(caplog)]
    full = [m for m in messages if " times in the last " not in m]
    summary = [m for m in messages if " times in the last " in m]
    # The first of each kind in full, once: the kinds never went quiet.
    assert len(full) == 2
    # Windows end at 10, 20 and 30 s (each summarised by the next failure), and the last 5 s at
    # the final flush: 4 windows x 2 names.
    assert len(summary) == 8
    post = [m for m in summary if "post_json" in m]
    assert post[0] == (
        "asyncbridge task post_json failed 1,000 times in the last 10 s: "
        "ClientConnectorError x1,000"
    )
    counted = sum(int(m.split(" failed ")[1].split(" ")[0].replace(",", "")) for m in post)
    assert counted == 3500


def test_a_kind_quiet_for_an_interval_is_logged_in_full_again(
    summaries: Summaries, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, LOGGER)
    summaries.failure("post_json", raised(ClientConnectorError("refused")))
    clock.now += 1
    summaries.failure("post_json", raised(ClientConnectorError("refused")))  # counted only
    clock.now += 30  # quiet for three intervals
    summaries.failure("post_json", raised(ClientConnectorError("refused")))
    summaries.flush(final=True)
    messages = [r.getMessage() for r in records(caplog)]
    assert [m.split(" (")[0] for m in messages] == [
        "asyncbridge task post_json failed",
        "asyncbridge task post_json failed 2 times in the last 31 s: ClientConnectorError x2",
        "asyncbridge task post_json failed",
    ]


def test_a_single_failure_writes_no_summary(
    summaries: Summaries, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, LOGGER)
    summaries.failure("post_json", raised(ClientConnectorError("refused")))
    clock.now += 11
    summaries.flush()
    summaries.flush(final=True)
    assert len(records(caplog)) == 1


def test_lanes_and_timeouts_are_told_apart(
    summaries: Summaries, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, LOGGER)
    for _ in range(3):
        summaries.failure("post_json", raised(ClientConnectorError("x")), lane="broken")
        summaries.failure("post_json", raised(ClientConnectorError("x")))
        summaries.failure("post_json", TimeoutError("exceeded task_timeout of 1s"), timed_out=True)
    clock.now += 2
    summaries.flush(final=True)
    messages = sorted(r.getMessage() for r in records(caplog) if " times in " in r.getMessage())
    assert messages == [
        "asyncbridge task post_json failed 6 times in the last 2 s: "
        "ClientConnectorError x3, timed out x3",
        "asyncbridge task post_json in lane 'broken' failed 3 times in the last 2 s: "
        "ClientConnectorError x3",
    ]
    full = [r.getMessage() for r in records(caplog) if " times in " not in r.getMessage()]
    assert len(full) == 3
    assert any(m.startswith("asyncbridge task post_json timed out: exceeded") for m in full)


def test_drops_use_the_same_mechanism_and_interval(
    summaries: Summaries, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, LOGGER)
    why = "the backlog is full (100 pending)"
    for total in range(1, 1001):
        clock.now += 0.001
        summaries.drop("notify" if total % 4 else "audit", "full", why, total, lane="push")
    summaries.flush(final=True)
    lines = records(caplog)
    assert [r.levelno for r in lines] == [logging.WARNING, logging.WARNING]
    assert lines[0].getMessage() == (
        "asyncbridge lane 'push' dropped notify: the backlog is full (100 pending) (1 dropped for "
        "this reason so far; more are summarised once per 10 s)"
    )
    assert lines[1].getMessage() == (
        "asyncbridge lane 'push' dropped 1,000 in the last 0.999 s, because the backlog is full "
        "(100 pending): notify x750, audit x250"
    )


def test_the_timer_is_asked_for_once_per_window_and_its_flush_writes_the_summary(
    summaries: Summaries, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, LOGGER)
    asked: list[float] = []
    summaries.schedule = asked.append
    summaries.failure("post_json", raised(ClientConnectorError("x")))  # in full: no timer yet
    assert asked == []
    clock.now += 2
    for _ in range(50):
        summaries.failure("post_json", raised(ClientConnectorError("x")))
    assert asked == [8.0]  # the window opened at the first failure, 2 s ago
    clock.now += 5
    summaries.flush()  # early (a timer that fired too soon): asks again for the rest
    assert asked == [8.0, 3.0]
    assert len(records(caplog)) == 1
    clock.now += 3
    summaries.flush()
    assert records(caplog)[-1].getMessage() == (
        "asyncbridge task post_json failed 51 times in the last 10 s: ClientConnectorError x51"
    )
    assert asked == [8.0, 3.0]


def test_a_closed_loop_refusing_the_timer_is_not_an_error(
    summaries: Summaries, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, LOGGER)

    def closed(delay: float) -> None:
        raise RuntimeError("Event loop is closed")

    summaries.schedule = closed
    for _ in range(3):
        summaries.failure("post_json", raised(ClientConnectorError("x")))
    summaries.flush(final=True)
    assert records(caplog)[-1].getMessage().startswith("asyncbridge task post_json failed 3 times")


def test_counts_are_exact_with_eight_threads_failing_at_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, LOGGER)
    summaries = Summaries(60.0, log=logging.getLogger(LOGGER))
    start = threading.Barrier(8)

    def fail_many() -> None:
        start.wait(10)
        for _ in range(1250):
            summaries.failure("post_json", ClientResponseError(503))

    threads = [threading.Thread(target=fail_many) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    summaries.flush(final=True)
    lines = records(caplog)
    assert len(lines) == 2
    assert (
        lines[1]
        .getMessage()
        .startswith("asyncbridge task post_json failed 10,000 times in the last ")
    )
    assert lines[1].getMessage().endswith(": ClientResponseError(503) x10,000")


def test_names_with_braces_are_written_as_they_are(
    summaries: Summaries, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, LOGGER)
    for _ in range(2):
        summaries.failure("odd{0}name", raised(ValueError("x")))
    clock.now += 1
    summaries.flush(final=True)
    assert records(caplog)[-1].getMessage() == (
        "asyncbridge task odd{0}name failed 2 times in the last 1 s: ValueError x2"
    )


# -- through a real bridge ------------------------------------------------------------------------


async def post_json(n: int) -> None:
    if n % 4 == 0:
        raise ClientResponseError(503)
    raise ClientConnectorError("refused")


async def notify() -> None:
    await asyncio.sleep(10)


def test_ten_thousand_failing_coroutines_on_a_bridge_give_a_handful_of_lines(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, "asyncbridge")
    bridge = Bridge(max_pending=20_000, log_interval=60)
    for n in range(10_000):
        assert bridge.run_soon(post_json(n))
    assert bridge.drain(60)
    report = bridge.shutdown(5, log=False)
    assert (report.stats.accepted, report.stats.failed) == (10_000, 10_000)
    lines = [r.getMessage() for r in caplog.records if r.name == "asyncbridge"]
    assert len(lines) == 3, lines
    assert lines[2] == (
        "asyncbridge task post_json failed 10,000 times in the last "
        + lines[2].split(" in the last ")[1].split(":")[0]
        + ": ClientConnectorError x7,500, ClientResponseError(503) x2,500"
    )


def test_ten_thousand_refusals_on_a_bridge_give_two_lines(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, "asyncbridge")
    bridge = Bridge(max_pending=1, log_interval=60)
    assert bridge.run_soon(notify())
    results = [bridge.run_soon(notify()) for _ in range(10_000)]
    report = bridge.shutdown(0.1, log=False)
    assert results == [False] * 10_000
    assert report.stats.dropped == {"full": 10_000, "closed": 0}
    lines = [r.getMessage() for r in caplog.records if r.name == "asyncbridge"]
    assert len(lines) == 2, lines
    assert lines[0].startswith("asyncbridge dropped notify: the backlog is full (1 pending)")
    assert lines[1].endswith(", because the backlog is full (1 pending): notify x10,000")


def test_the_log_interval_option_sets_the_summaries_interval() -> None:
    bridge = Bridge(log_interval=2.5)
    try:
        bridge.start()
        assert bridge._rt.summaries.interval == 2.5
        bridge.configure(log_interval=7)
        assert bridge._rt.summaries.interval == 7.0
    finally:
        bridge.shutdown(5, log=False)
    with pytest.raises(ValueError):
        Bridge(log_interval=0)
