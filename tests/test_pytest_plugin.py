"""The pytest plugin, run the way users run it: inner test files in a fresh pytest process."""

from __future__ import annotations

import textwrap

import pytest

import asyncbridge.pytest_plugin as plugin

pytest_plugins = ["pytester"]

INNER_INI = """
[pytest]
filterwarnings = error
asyncio_default_fixture_loop_scope = function
timeout = 60
"""


@pytest.fixture
def inner(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makeini(INNER_INI)
    return pytester


def run(pytester: pytest.Pytester, source: str, *args: str) -> pytest.RunResult:
    pytester.makepyfile(test_inner=textwrap.dedent(source))
    return pytester.runpytest_subprocess("-p", "no:cacheprovider", *args, timeout=90)


def test_plugin_defines_no_hooks() -> None:
    assert [name for name in vars(plugin) if name.startswith("pytest_")] == []


def test_plugin_is_loaded_but_inert_when_its_fixtures_are_unused(inner: pytest.Pytester) -> None:
    result = run(
        inner,
        """
        import sys
        import threading

        import asyncbridge
        from asyncbridge import Bridge


        def _bridge_threads():
            return [t.name for t in threading.enumerate() if t.name.startswith("asyncbridge-")]


        def test_loaded_and_idle(pytestconfig):
            assert pytestconfig.pluginmanager.hasplugin("asyncbridge")
            assert "asyncbridge.pytest_plugin" in sys.modules
            assert "asyncbridge.aiohttp" not in sys.modules
            assert type(asyncbridge.default_bridge()) is Bridge
            assert asyncbridge.stats().loop_running is False
            assert asyncbridge.default_bridge().owns_loop() is False
            assert _bridge_threads() == []


        def test_still_idle_after_another_test():
            assert asyncbridge.stats().loop_running is False
            assert _bridge_threads() == []
        """,
    )
    result.assert_outcomes(passed=2)


def test_fixtures_are_listed(inner: pytest.Pytester) -> None:
    result = run(inner, "def test_nothing():\n    pass\n", "--fixtures")
    result.stdout.fnmatch_lines(
        ["asyncbridge_bridge*", "*fresh*RecordingBridge*", "asyncbridge_eager*"]
    )


BACKGROUND = """
    import asyncio
    import threading

    import pytest

    import asyncbridge
    from asyncbridge.pytest_plugin import RecordingBridge

    ORIGINAL = asyncbridge.default_bridge()


    @pytest.fixture
    def asyncbridge_options():
        return {"task_timeout": 0.3, "max_concurrency": 4}


    async def ok(results, value):
        await asyncio.sleep(0.01)
        results.append(value)


    async def boom(message):
        raise ValueError(message)


    async def hang():
        await asyncio.sleep(30)


    def test_fresh_default_bridge_records_outcomes(asyncbridge_bridge):
        assert isinstance(asyncbridge_bridge, RecordingBridge)
        assert asyncbridge.default_bridge() is asyncbridge_bridge
        assert asyncbridge_bridge.options.task_timeout == 0.3
        results = []
        for i in range(3):
            assert asyncbridge.run_soon(ok(results, i))
        assert asyncbridge.run_soon(boom("first"))
        assert asyncbridge.run_soon(hang())
        assert asyncbridge_bridge.drain()
        assert sorted(results) == [0, 1, 2]
        assert asyncbridge_bridge.completed == 3
        assert asyncbridge_bridge.failed == 1
        assert asyncbridge_bridge.timed_out == 1
        assert asyncbridge_bridge.cancelled == 0
        assert [name for name, _ in asyncbridge_bridge.errors] == ["boom", "hang"]
        first, second = asyncbridge_bridge.exceptions
        assert isinstance(first, ValueError) and str(first) == "first"
        assert isinstance(second, TimeoutError)


    def test_each_test_gets_a_new_bridge(asyncbridge_bridge):
        assert asyncbridge_bridge.stats().accepted == 0
        assert asyncbridge_bridge.errors == []


    def test_user_on_error_hook_still_runs(asyncbridge_bridge):
        seen = []
        asyncbridge_bridge.configure(on_error=lambda exc, name: seen.append(name))
        asyncbridge.run_soon(boom("x"))
        assert asyncbridge_bridge.drain()
        assert seen == ["boom"]
        assert len(asyncbridge_bridge.exceptions) == 1


    def test_counts_are_real(asyncbridge_bridge):
        asyncbridge.run_soon(boom("not a success"))
        assert asyncbridge_bridge.drain()
        assert asyncbridge_bridge.completed == 1  # fails on purpose: the coroutine raised


    def test_default_restored_and_loop_threads_gone():
        assert asyncbridge.default_bridge() is ORIGINAL
        assert [t for t in threading.enumerate() if t.name.startswith("asyncbridge-")] == []
"""


def test_bridge_fixture_records_completed_failed_timed_out_and_exceptions(
    inner: pytest.Pytester,
) -> None:
    result = run(inner, BACKGROUND)
    result.assert_outcomes(passed=4, failed=1)
    result.stdout.fnmatch_lines(["*test_counts_are_real*", "*assert 0 == 1*"])


EAGER = """
    import asyncio
    import contextvars

    import pytest

    import asyncbridge
    from asyncbridge.pytest_plugin import EagerBridge

    request_id = contextvars.ContextVar("request_id", default="-")
    log = []


    async def record(value):
        await asyncio.sleep(0.02)
        log.append((value, request_id.get()))


    async def boom():
        await asyncio.sleep(0)
        raise KeyError("lost")


    async def answer():
        await asyncio.sleep(0.01)
        return 42


    async def nested():
        # From the loop thread an eager bridge cannot wait; it schedules as usual.
        asyncbridge.run_soon(record("inner"))
        log.append(("outer", request_id.get()))


    @pytest.fixture(autouse=True)
    def _clear_log():
        log.clear()


    def test_run_soon_returns_after_the_coroutine_finished(asyncbridge_eager):
        assert isinstance(asyncbridge_eager, EagerBridge)
        request_id.set("req-1")
        for i in range(3):
            assert asyncbridge.run_soon(record(i)) is True
            assert log[-1] == (i, "req-1")
        assert asyncbridge_eager.completed == 3
        assert asyncbridge_eager.stats().pending == asyncbridge_eager.stats().running == 0


    def test_exceptions_are_recorded_not_raised(asyncbridge_eager):
        assert asyncbridge.run_soon(boom()) is True
        assert asyncbridge_eager.failed == 1
        assert [type(e) for e in asyncbridge_eager.exceptions] == [KeyError]


    def test_submit_returns_a_done_future(asyncbridge_eager):
        future = asyncbridge.submit(answer())
        assert future.done()
        assert future.result(0) == 42


    def test_run_soon_from_the_loop_still_runs(asyncbridge_eager):
        asyncbridge.run_soon(nested())
        assert [v for v, _ in log] == ["outer", "inner"]
        assert asyncbridge_eager.completed == 2


    @pytest.mark.parametrize("asyncbridge_options", [{"eager_timeout": 0.2}])
    def test_a_coroutine_that_never_finishes_fails_loudly(asyncbridge_eager):
        with pytest.raises(TimeoutError, match="did not finish within 0.2s"):
            asyncbridge.run_soon(asyncio.sleep(1))
"""


def test_eager_fixture_runs_each_coroutine_before_run_soon_returns(
    inner: pytest.Pytester,
) -> None:
    result = run(inner, EAGER)
    result.assert_outcomes(passed=5)


def test_on_error_hook_from_the_environment_still_runs(
    inner: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ASYNCBRIDGE_ON_ERROR", "test_inner.hook")
    result = run(
        inner,
        """
        import asyncbridge

        seen = []


        def hook(exc, name):
            seen.append(name)


        async def boom():
            raise ValueError("x")


        def test_env_hook_and_recording(asyncbridge_eager):
            asyncbridge.run_soon(boom())
            assert seen == ["boom"]
            assert [type(e) for e in asyncbridge_eager.exceptions] == [ValueError]
        """,
    )
    result.assert_outcomes(passed=1)


def test_teardown_errors_when_a_coroutine_blocks_the_loop(inner: pytest.Pytester) -> None:
    result = run(
        inner,
        """
        import time

        import asyncbridge


        async def blocks_the_loop():
            time.sleep(8)  # synchronous: the loop cannot drain or cancel it


        def test_hands_off_blocking_code(asyncbridge_bridge):
            assert asyncbridge.run_soon(blocks_the_loop())
        """,
    )
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(["*AsyncBridgeError: the test's bridge loop did not respond*"])
