"""asyncbridge.django.AsyncBridgeBackend with Django's real Tasks framework, in this process.

Django 6's ``django.tasks`` where it exists (Python 3.12+), the ``django-tasks`` backport for
Django 5.2 otherwise; the tests are the same for both. Django's settings are configured once for
the process with a few backend aliases; every test swaps in a fresh default bridge.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import pytest

import asyncbridge
import asyncbridge.aiohttp
from asyncbridge import BacklogFull, Bridge
from asyncbridge.pytest_plugin import EagerBridge

from .e2e.sink import Sink
from .example_tests import assert_example_tests_pass

if TYPE_CHECKING:
    from django_tasks import TaskContext, TaskResult
    from django_tasks.base import Task

TASKS: dict[str, dict[str, Any]] = {
    "default": {"BACKEND": "asyncbridge.django.AsyncBridgeBackend"},
    "eager": {"BACKEND": "asyncbridge.django.AsyncBridgeBackend", "OPTIONS": {"EAGER": True}},
    "small": {"BACKEND": "asyncbridge.django.AsyncBridgeBackend", "OPTIONS": {"MAX_RESULTS": 2}},
    "two": {"BACKEND": "asyncbridge.django.AsyncBridgeBackend", "OPTIONS": {"THREADS": 2}},
}


@pytest.fixture(scope="module", autouse=True)
def django_settings() -> Iterator[None]:
    import django  # type: ignore[import-untyped]
    from django.conf import settings  # type: ignore[import-untyped]
    from django.test.utils import override_settings  # type: ignore[import-untyped]

    tasks = dict(TASKS)
    immediate = f"{_tasks_module().__name__}.backends.immediate.ImmediateBackend"
    tasks["immediate"] = {"BACKEND": immediate}
    if not settings.configured:
        settings.configure(USE_TZ=True, INSTALLED_APPS=[], DATABASES={}, TASKS=tasks)
        django.setup()
    with override_settings(TASKS=tasks):
        yield


def _task(func: Callable[..., Any], backend: str = "default", **options: Any) -> Task[Any, Any]:
    """What ``@task(backend=...)`` makes of ``func``, made when a test needs it."""
    from asyncbridge.django import AsyncBridgeBackend

    task: Task[Any, Any] = AsyncBridgeBackend.task_class(func=func, backend=backend, **options)
    return task


def _tasks_module() -> Any:
    """``django.tasks`` (Django 6) or the ``django_tasks`` backport, whichever is in use."""
    try:
        import django.tasks as tasks  # type: ignore[import-untyped]
    except ImportError:
        import django_tasks as tasks
    return tasks


def _status(result: TaskResult[Any]) -> str:
    return str(result.status)


@pytest.fixture
def bridge() -> Iterator[Bridge]:
    """A fresh default bridge for the test, shut down afterwards."""
    fresh = Bridge()
    previous = asyncbridge.set_default_bridge(fresh)
    try:
        yield fresh
    finally:
        fresh.shutdown(5)
        asyncbridge.set_default_bridge(previous)


def _wait_running(func: Callable[..., Any], result: TaskResult[Any]) -> None:
    """Wait (10 s at most) until the backend's store says the task is running."""
    deadline = time.monotonic() + 10
    while _task(func).get_result(result.id).status != "RUNNING":
        assert time.monotonic() < deadline
        time.sleep(0.01)


def _refreshed(result: TaskResult[Any], bridge: Bridge) -> TaskResult[Any]:
    assert bridge.drain(10)
    result.refresh()
    return result


# -- module-level task functions (Django's rule) --------------------------------------------


SEEN: list[Any] = []
GATE = threading.Event()


async def add(a: int, b: int) -> int:
    SEEN.append(Bridge.current() is not None)  # running on a bridge loop
    await asyncio.sleep(0)
    return a + b


def add_sync(a: int, b: int) -> int:
    SEEN.append(threading.current_thread().name)
    return a + b


async def fail() -> None:
    raise ValueError("task says no")


async def slow(seconds: float) -> str:
    await asyncio.sleep(seconds)
    return "done"


def blocking_sync(seconds: float) -> str:
    time.sleep(seconds)
    return "done"


def wait_gate() -> int:
    SEEN.append(threading.current_thread().name)
    GATE.wait(10)
    return 1


async def with_context(context: TaskContext, x: int) -> list[Any]:
    return [context.attempt, context.task_result.id, x]


async def post(url: str, i: int) -> Any:
    return await asyncbridge.aiohttp.post_json(url, {"id": f"d{i}"})


@pytest.fixture(autouse=True)
def _reset() -> Iterator[None]:
    SEEN.clear()
    GATE.clear()
    yield
    GATE.set()
    SEEN.clear()


# -- tests ---------------------------------------------------------------------------------------


def test_enqueue_returns_ready_and_the_async_task_runs_on_the_bridge(bridge: Bridge) -> None:
    result = _task(add).enqueue(2, 3)
    assert _status(result) in ("READY", "RUNNING", "SUCCESSFUL")
    assert result.enqueued_at is not None
    _refreshed(result, bridge)
    assert _status(result) == "SUCCESSFUL"
    assert result.return_value == 5
    assert result.started_at is not None and result.finished_at is not None
    assert result.attempts == 1
    assert SEEN == [True]
    s = bridge.stats()
    assert (s.accepted, s.completed, s.failed) == (1, 1, 0)


def test_the_returned_result_is_a_snapshot_that_refresh_updates(bridge: Bridge) -> None:
    task = _task(slow)
    result = task.enqueue(0.2)
    assert _status(result) in ("READY", "RUNNING")
    assert not result.is_finished
    again = task.get_result(result.id)
    assert again is not result and again.id == result.id
    _refreshed(result, bridge)
    assert (_status(result), result.return_value) == ("SUCCESSFUL", "done")


def test_a_sync_task_runs_in_the_bridges_threads(bridge: Bridge) -> None:
    result = _task(add_sync).enqueue(4, 5)
    _refreshed(result, bridge)
    assert (_status(result), result.return_value) == ("SUCCESSFUL", 9)
    assert SEEN == ["asyncbridge-tasks-default-0"]


def test_threads_option_bounds_the_sync_pool(bridge: Bridge) -> None:
    results = [_task(wait_gate, backend="two").enqueue() for _ in range(4)]
    deadline = time.monotonic() + 10
    while len(SEEN) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.2)  # had there been a third thread, it would have started by now
    assert len(SEEN) == 2
    GATE.set()
    assert bridge.drain(10)
    assert sorted(set(SEEN)) == ["asyncbridge-tasks-two-0", "asyncbridge-tasks-two-1"]
    for result in results:
        result.refresh()
        assert _status(result) == "SUCCESSFUL"


def test_a_failing_task_is_failed_for_django_and_for_asyncbridge(bridge: Bridge) -> None:
    result = _task(fail).enqueue()
    _refreshed(result, bridge)
    assert _status(result) == "FAILED"
    assert [e.exception_class for e in result.errors] == [ValueError]
    assert "task says no" in result.errors[0].traceback
    with pytest.raises(ValueError, match="Task failed"):
        _ = result.return_value
    s = bridge.stats()
    assert (s.accepted, s.completed, s.failed) == (1, 0, 1)


def test_signals_follow_the_lifecycle(bridge: Bridge) -> None:
    signals = _tasks_module().signals
    task_enqueued, task_started, task_finished = (
        signals.task_enqueued,
        signals.task_started,
        signals.task_finished,
    )

    seen: list[tuple[str, str, str]] = []

    def receiver(signal: Any, sender: Any, task_result: TaskResult[Any], **_: Any) -> None:
        name = {task_enqueued: "enqueued", task_started: "started", task_finished: "finished"}
        seen.append((name[signal], task_result.id, _status(task_result)))

    for sig in (task_enqueued, task_started, task_finished):
        sig.connect(receiver)
    try:
        ok = _task(add).enqueue(1, 1)
        failed = _task(fail).enqueue()
        assert bridge.drain(10)
    finally:
        for sig in (task_enqueued, task_started, task_finished):
            sig.disconnect(receiver)
    for result, outcome in ((ok, "SUCCESSFUL"), (failed, "FAILED")):
        assert [(n, s) for n, i, s in seen if i == result.id] == [
            ("enqueued", "READY"),
            ("started", "RUNNING"),
            ("finished", outcome),
        ]


def test_a_dropped_task_is_failed_not_pretended(bridge: Bridge) -> None:
    bridge.configure(max_pending=1)
    first = _task(slow).enqueue(0.3)
    dropped = _task(add).enqueue(1, 2)
    assert _status(dropped) == "FAILED"
    assert [e.exception_class for e in dropped.errors] == [BacklogFull]
    assert "backlog is full (1 pending)" in dropped.errors[0].traceback
    s = bridge.stats()
    assert (s.accepted, s.dropped["full"]) == (1, 1)
    _refreshed(first, bridge)
    assert _status(first) == "SUCCESSFUL"
    dropped.refresh()
    assert _status(dropped) == "FAILED"  # and it stays so: it never ran


def test_on_full_raise_raises_from_enqueue(bridge: Bridge) -> None:
    bridge.configure(max_pending=1, on_full="raise")
    _task(slow).enqueue(0.3)
    with pytest.raises(BacklogFull):
        _task(add).enqueue(1, 2)
    assert bridge.stats().dropped["full"] == 1


def test_after_shutdown_enqueue_fails_with_the_reason(bridge: Bridge) -> None:
    bridge.shutdown(5)
    result = _task(add).enqueue(1, 2)
    assert _status(result) == "FAILED"
    assert [e.exception_class for e in result.errors] == [asyncbridge.BridgeClosed]
    assert bridge.stats().dropped["closed"] == 1


def test_tasks_cut_at_the_drain_deadline_are_failed(bridge: Bridge) -> None:
    bridge.configure(max_concurrency=1)
    running = _task(slow).enqueue(30)
    queued = _task(add).enqueue(1, 2)  # waits behind it, never starts
    _wait_running(slow, running)
    report = bridge.shutdown(0.2)
    assert report.stats.cancelled == 2
    assert "tests.test_django_tasks.slow" in report.cancelled_names
    assert "tests.test_django_tasks.add" in report.cancelled_names
    for result in (running, queued):
        result.refresh()
        assert _status(result) == "FAILED"
        assert [e.exception_class for e in result.errors] == [asyncio.CancelledError]


def test_a_sync_task_still_running_at_the_deadline_is_failed(bridge: Bridge) -> None:
    result = _task(blocking_sync).enqueue(1.5)
    _wait_running(blocking_sync, result)
    report = bridge.shutdown(0.1)
    assert report.stats.cancelled == 1
    result.refresh()
    assert _status(result) == "FAILED"
    assert "still running when the asyncbridge drain deadline passed" in (
        result.errors[0].traceback
    )


def test_results_are_kept_in_a_bounded_store(bridge: Bridge) -> None:
    TaskResultDoesNotExist = _tasks_module().exceptions.TaskResultDoesNotExist

    task = _task(add, backend="small")
    results = [task.enqueue(i, i) for i in range(3)]
    assert bridge.drain(10)
    with pytest.raises(TaskResultDoesNotExist):
        task.get_result(results[0].id)  # the oldest of three, with MAX_RESULTS = 2
    assert [task.get_result(r.id).return_value for r in results[1:]] == [2, 4]
    with pytest.raises(TaskResultDoesNotExist):
        task.get_result("no-such-id")


def test_capabilities_say_what_the_backend_does() -> None:
    from asyncbridge.django import AsyncBridgeBackend

    assert AsyncBridgeBackend.supports_async_task is True
    assert AsyncBridgeBackend.supports_get_result is False  # in this process only
    assert AsyncBridgeBackend.supports_defer is False
    assert AsyncBridgeBackend.supports_priority is False


def test_unsupported_task_settings_are_refused() -> None:
    import datetime

    exceptions = _tasks_module().exceptions
    invalid = getattr(exceptions, "InvalidTask", None) or exceptions.InvalidTaskError

    with pytest.raises(invalid):
        _task(add, priority=5)
    with pytest.raises(invalid):
        _task(add).using(run_after=datetime.datetime.now(datetime.UTC))


def test_a_task_that_takes_context(bridge: Bridge) -> None:
    result = _task(with_context, takes_context=True).enqueue(7)
    _refreshed(result, bridge)
    assert result.return_value == [1, result.id, 7]


def test_eager_option_returns_the_finished_result(bridge: Bridge) -> None:
    result = _task(add, backend="eager").enqueue(20, 22)
    assert (_status(result), result.return_value) == ("SUCCESSFUL", 42)


def test_asyncbridge_eager_fixture_makes_enqueue_wait(asyncbridge_eager: EagerBridge) -> None:
    with Sink() as sink:
        result = _task(post).enqueue(sink.url, 1)
        assert _status(result) == "SUCCESSFUL"
        assert result.return_value == {"ok": True}
        assert dict(sink.ids) == {"d1": 1}


def test_immediate_backend_cannot_use_the_bridge_session() -> None:
    # Django's ImmediateBackend runs an async task on a loop of its own: the trap this backend
    # (or the asyncbridge_eager fixture) avoids in tests.
    result = _task(post, backend="immediate").enqueue("http://127.0.0.1:9/notify", 1)
    assert _status(result) == "FAILED"
    assert [e.exception_class for e in result.errors] == [asyncbridge.AsyncBridgeError]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"NOPE": 1}, "unknown option"),
        ({"THREADS": 0}, "THREADS"),
        ({"MAX_RESULTS": -1}, "MAX_RESULTS"),
        ({"EAGER": "yes"}, "EAGER"),
        ({"EAGER_TIMEOUT": "soon"}, "EAGER_TIMEOUT"),
    ],
)
def test_bad_options_are_refused(options: dict[str, Any], message: str) -> None:
    from django.core.exceptions import ImproperlyConfigured  # type: ignore[import-untyped]

    from asyncbridge.django import AsyncBridgeBackend

    with pytest.raises(ImproperlyConfigured, match=message):
        AsyncBridgeBackend("bad", {"OPTIONS": options})


def test_the_example_projects_own_tests_pass_with_the_plugin() -> None:
    # examples/django_tasks/test_shop.py, run as a user would run it (its conftest configures
    # Django, so it gets a fresh interpreter).
    assert_example_tests_pass("django_tasks", passed=2)
