"""The module-level API on the default bridge, in fresh interpreters where it matters."""

from __future__ import annotations

import textwrap

import asyncbridge
from asyncbridge import Bridge

from .helpers import run_python, sleeper


def test_importing_starts_no_loop_and_no_thread() -> None:
    result = run_python(
        "import threading, asyncbridge, asyncbridge.aiohttp\n"
        "names = [t.name for t in threading.enumerate()]\n"
        "s = asyncbridge.stats()\n"
        "print(names, s.loop_running, s.accepted)\n"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "['MainThread'] False 0"


def test_atexit_drains_work_of_a_process_that_never_called_shutdown() -> None:
    code = textwrap.dedent(
        """
        import asyncio, logging, sys
        import asyncbridge
        logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(message)s")

        async def job(i):
            await asyncio.sleep(0.2)
            print("job", i, "done", flush=True)

        for i in range(3):
            asyncbridge.run_soon(job(i))
        print("main returns", flush=True)
        """
    )
    result = run_python(code, timeout=30)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "main returns"
    assert sorted(lines[1:4]) == ["job 0 done", "job 1 done", "job 2 done"]
    assert "accepted=3 completed=3" in lines[4]


def test_module_functions_use_the_default_bridge_and_it_can_be_swapped() -> None:
    mine = Bridge()
    previous = asyncbridge.set_default_bridge(mine)
    try:
        assert asyncbridge.default_bridge() is mine
        assert asyncbridge.run(sleeper(0, 5), timeout=5) == 5
        assert asyncbridge.submit(sleeper(0, 6)).result(5) == 6
        assert asyncbridge.run_soon(sleeper(0)) is True
        asyncbridge.start()
        assert asyncbridge.get_loop() is mine.get_loop()
        asyncbridge.configure(max_pending=9)
        assert mine.options.max_pending == 9
        report = asyncbridge.shutdown(5)
        assert report.stats.accepted == 3 == asyncbridge.stats().completed
    finally:
        asyncbridge.set_default_bridge(previous)
    assert asyncbridge.default_bridge() is previous


def test_set_default_bridge_rejects_other_objects() -> None:
    import pytest

    with pytest.raises(TypeError, match="takes a Bridge"):
        asyncbridge.set_default_bridge(object())  # type: ignore[arg-type]


def test_shutdown_report_summary_line() -> None:
    bridge = Bridge()
    bridge.run(sleeper(0), timeout=5)
    text = str(bridge.shutdown(5))
    assert text.startswith("asyncbridge shutdown of pid ")
    assert "accepted=1 completed=1 failed=0 timed_out=0 cancelled=0" in text
    assert "dropped_full=0 dropped_closed=0" in text
