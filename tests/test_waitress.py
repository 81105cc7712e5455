"""asyncbridge.waitress without Waitress: SIGTERM becomes a clean exit, from the main thread only.

The real server is exercised in tests/e2e/test_waitress.py. Each case runs in a subprocess with
a hard timeout, since it ends the process with a signal.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import threading

import pytest

import asyncbridge.waitress
from asyncbridge import AsyncBridgeError

from .helpers import ROOT


def _python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )


def test_sigterm_exits_cleanly_so_atexit_drains() -> None:
    done = _python(
        """
        import asyncio, os, signal
        import asyncbridge, asyncbridge.waitress

        async def work():
            await asyncio.sleep(0.3)
            print("work done", flush=True)

        asyncbridge.waitress.install()
        asyncbridge.waitress.install()  # twice: the same handler
        assert asyncbridge.run_soon(work())
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            signal.pause()
        finally:
            # SystemExit unwinds here, as Waitress's serve() would return.
            print("unwound", flush=True)
        """
    )
    assert done.returncode == 0, done.stderr
    # The atexit fallback drained the work handed over before the signal.
    assert done.stdout.splitlines() == ["unwound", "work done"]


def test_a_second_signal_during_the_exit_is_ignored() -> None:
    done = _python(
        """
        import os, signal, time
        import asyncbridge.waitress

        asyncbridge.waitress.install()
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            signal.pause()
        finally:
            os.kill(os.getpid(), signal.SIGTERM)  # ignored
            os.kill(os.getpid(), signal.SIGINT)  # ignored
            time.sleep(0.2)
            print("exit not cut short", flush=True)
        """
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "exit not cut short"


def test_refuses_outside_the_main_thread() -> None:
    errors: list[BaseException] = []

    def call() -> None:
        try:
            asyncbridge.waitress.install()
        except BaseException as exc:
            errors.append(exc)

    before = signal.getsignal(signal.SIGTERM)
    t = threading.Thread(target=call)
    t.start()
    t.join(10)
    assert len(errors) == 1 and isinstance(errors[0], AsyncBridgeError)
    assert "main thread" in str(errors[0])
    assert signal.getsignal(signal.SIGTERM) == before


def test_importing_it_does_not_import_waitress() -> None:
    done = _python("import sys, asyncbridge.waitress; print('waitress' in sys.modules)")
    assert done.stdout.strip() == "False"


@pytest.mark.parametrize("name", asyncbridge.waitress.__all__)
def test_public_names_are_documented(name: str) -> None:
    assert getattr(asyncbridge.waitress, name).__doc__
