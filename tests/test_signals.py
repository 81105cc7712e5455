"""install_signal_handlers() for plain processes: the signal drains, then the process exits."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

import asyncbridge
from asyncbridge import AsyncBridgeError

from .helpers import ROOT

SCRIPT = textwrap.dedent(
    """
    import asyncio, logging, sys, time
    import asyncbridge

    logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(message)s")
    done = []

    async def job(i):
        await asyncio.sleep(0.3)
        done.append(i)

    asyncbridge.install_signal_handlers(timeout=5)
    for i in range(20):
        asyncbridge.run_soon(job(i))
    try:
        print("READY", flush=True)
        while True:
            time.sleep(0.05)
    except KeyboardInterrupt:
        print("KeyboardInterrupt after drain, done", len(done), flush=True)
    """
)


def _start() -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", SCRIPT],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=ROOT,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "READY"
    return proc


@pytest.mark.parametrize(
    ("signum", "returncode", "tail"),
    [
        (signal.SIGTERM, -signal.SIGTERM, None),
        (signal.SIGINT, 0, "KeyboardInterrupt after drain, done 20"),
    ],
    ids=["SIGTERM", "SIGINT"],
)
def test_signal_drains_pending_work_then_does_what_it_did_before(
    signum: int, returncode: int, tail: str | None
) -> None:
    proc = _start()
    try:
        proc.send_signal(signum)
        out, _ = proc.communicate(timeout=20)
    finally:
        proc.kill()
        proc.wait(10)
    assert proc.returncode == returncode, out
    assert "accepted=20 completed=20" in out
    assert "cancelled=0" in out
    if tail is not None:
        assert tail in out


def test_install_signal_handlers_outside_the_main_thread_is_refused() -> None:
    errors: list[BaseException] = []

    def install() -> None:
        try:
            asyncbridge.install_signal_handlers()
        except AsyncBridgeError as exc:
            errors.append(exc)

    t = threading.Thread(target=install)
    t.start()
    t.join(5)
    assert len(errors) == 1 and "main thread" in str(errors[0])


def test_a_second_signal_during_the_drain_does_not_cut_it_short() -> None:
    proc = _start()
    try:
        proc.send_signal(signal.SIGINT)
        time.sleep(0.1)  # the drain is under way (the jobs take 0.3 s)
        proc.send_signal(signal.SIGINT)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=20)
    finally:
        proc.kill()
        proc.wait(10)
    assert proc.returncode == 0, out
    assert "accepted=20 completed=20" in out
    assert "KeyboardInterrupt after drain, done 20" in out


def test_an_ignored_signal_stays_ignored() -> None:
    code = (
        "import signal, asyncbridge\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "asyncbridge.install_signal_handlers()\n"
        "print(signal.getsignal(signal.SIGTERM) is signal.SIG_IGN,"
        " signal.getsignal(signal.SIGINT) is signal.default_int_handler)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, cwd=ROOT
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["True", "False"]
