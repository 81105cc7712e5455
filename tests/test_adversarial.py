"""An adversarial battery against the core's promises, one subprocess per case.

The promises (docs/guarantees.md): the bridge never hangs; shutdown never takes longer than its
deadline plus about a second; nothing accepted is lost uncounted (``accepted == completed + failed
+ timed_out + cancelled + pending + running``, drops counted by reason); logs carry qualnames only,
never arguments or reprs; bad input gets a clear TypeError or ValueError naming what was passed.

Each case is a small Python program run in its own interpreter with a hard timeout (a hang fails
the case instead of stalling the suite; ``faulthandler`` dumps every thread's stack just before).
The program prints its findings as ``VERDICT {json}`` lines and streams every log record, warning,
unraisable exception and thread exception as one line each (raw ``os.write``, safe from signal
handlers); the test asserts on them. Selected cases start in parallel (3 at a time) when the module
begins, so the battery stays well under a minute.

What the library must promise here, beyond the guarantees page, decided by this battery:

- A log message (``record.getMessage()``) from asyncbridge is one line of bounded length, whatever
  name a coroutine carries; tracebacks travel in ``exc_info``, not in the message.
- A hook that raises is named by its qualname in the log, never by its repr (a ``partial`` or a
  bound method's repr carries its arguments).
- A ``SystemExit`` or ``KeyboardInterrupt`` raised by a hook on the loop is logged and ignored
  like any exception: the loop thread cannot end the process, and must not stall.
- ``configure()`` "takes effect at once": callers waiting for room see a raised ``max_pending``,
  waiting work starts when ``max_concurrency`` is raised, and concurrent calls lose no update.
- Exception messages are the application's own text and are logged as raised; the library never
  adds a coroutine's arguments, locals or repr to them.

Set ``ASYNCBRIDGE_UNDER_TEST`` to another checkout's root to run the battery against it.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
UNDER_TEST = Path(os.environ.get("ASYNCBRIDGE_UNDER_TEST", str(ROOT)))
PARALLEL = 3

# The program every case starts with. It imports no asyncbridge: cases about the environment
# import it themselves.
PRELUDE = r'''
import asyncio, collections.abc, concurrent.futures, faulthandler, functools, gc, itertools
import json, logging, math, os, signal, sys, threading, time, warnings

faulthandler.dump_traceback_later(__HANG_AFTER__, exit=True)

def _emit(kind, payload):
    line = kind + " " + json.dumps(payload, default=repr)
    if kind != "VERDICT" and len(line) > 3800:  # one atomic pipe write: never interleaved
        line = kind + " " + json.dumps({"truncated": True, "head": line[:3000]})
    data = (line + "\n").encode("utf-8", "backslashreplace")
    while data:
        data = data[os.write(1, data):]

RECORDS = []

class _Capture(logging.Handler):
    def emit(self, record):
        try:
            msg = record.getMessage()
            text = self.format(record)
        except Exception as exc:
            msg = text = "LOGGING-ERROR " + type(exc).__name__ + ": " + str(exc)
        RECORDS.append((record.levelname, record.name, msg, text))
        _emit("LOG", {"level": record.levelname, "logger": record.name, "msg": msg[:1500],
                      "msg_len": len(msg), "multiline_msg": "\n" in msg, "text": text[:2500]})

_capture = _Capture()
_capture.setFormatter(logging.Formatter("%(levelname)s %(name)s %(message)s"))
logging.getLogger().addHandler(_capture)
logging.getLogger().setLevel(logging.DEBUG)

warnings.simplefilter("always")
def _showwarning(message, category, filename, lineno, file=None, line=None):
    _emit("WARN", {"category": category.__name__, "message": str(message)})
warnings.showwarning = _showwarning
sys.unraisablehook = lambda u: _emit(
    "UNRAISABLE", {"exc": repr(u.exc_value), "obj": repr(u.object)[:300]})
threading.excepthook = lambda a: _emit(
    "THREADEXC", {"exc": repr(a.exc_value), "thread": a.thread.name if a.thread else None})

def verdict(**kw):
    _emit("VERDICT", kw)

def logs_contain(needle):
    return any(needle in text for _, _, _, text in RECORDS)

def counts(s):
    return {"accepted": s.accepted, "completed": s.completed, "failed": s.failed,
            "timed_out": s.timed_out, "cancelled": s.cancelled, "pending": s.pending,
            "running": s.running, "dropped_full": s.dropped.get("full", 0),
            "dropped_closed": s.dropped.get("closed", 0), "loop_running": s.loop_running,
            "balanced": s.accepted == s.completed + s.failed + s.timed_out + s.cancelled
                        + s.pending + s.running}

def info(r):
    return {"counts": counts(r.stats), "clean": r.clean, "abandoned": r.abandoned,
            "cancelled_names": list(r.cancelled_names),
            "abandoned_names": list(r.abandoned_names) if hasattr(r, "abandoned_names") else None,
            "final": getattr(r, "final", None), "elapsed": r.elapsed, "timeout": r.timeout,
            "text": str(r)[:2000], "text_len": len(str(r)), "text_multiline": "\n" in str(r)}

def err(exc):
    return {"type": type(exc).__name__, "msg": str(exc)[:1500], "msg_len": len(str(exc))}

async def forever():
    await asyncio.Event().wait()

async def nap(seconds=0.05, result=None):
    await asyncio.sleep(seconds)
    return result

async def quick():
    return None

async def boom():
    raise RuntimeError("boom")

class Shady(collections.abc.Coroutine):
    """A coroutine object of its own class: asyncio runs it, its names and repr misbehave."""

    def __init__(self, inner, qualname=None, rep="<Shady>"):
        self._inner, self._qualname, self._rep = inner, qualname, rep

    def send(self, value):
        return self._inner.send(value)

    def throw(self, *args):
        return self._inner.throw(*args)

    def close(self):
        return self._inner.close()

    def __await__(self):
        return self._inner.__await__()

    def __getattr__(self, name):
        if name == "__qualname__" and self._qualname is not None:
            if isinstance(self._qualname, BaseException):
                raise self._qualname
            return self._qualname
        raise AttributeError(name)

    def __repr__(self):
        if isinstance(self._rep, BaseException):
            raise self._rep
        return self._rep

def interrupt_main_after(seconds):
    """Ctrl-C, as a terminal sends it: SIGINT to this process after ``seconds``."""
    t = threading.Timer(seconds, os.kill, (os.getpid(), signal.SIGINT))
    t.daemon = True
    t.start()

def _finish():
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
'''


@dataclass(frozen=True)
class Case:
    """A child program and its hard timeout in seconds."""

    code: str
    timeout: float = 20.0
    env: dict[str, str] = field(default_factory=dict)
    natural_exit: bool = False  # let the interpreter exit by itself (atexit, signals)


@dataclass
class Outcome:
    """What a child printed, how it ended, and how long it took."""

    verdict: dict[str, Any]
    logs: list[dict[str, Any]]
    warnings: list[dict[str, Any]]
    problems: list[str]  # unraisable exceptions and exceptions in threads
    returncode: int | None
    stdout: str
    stderr: str
    hung: bool
    seconds: float

    def log_lines(self, needle: str) -> list[str]:
        """Log texts (message and traceback) that contain ``needle``."""
        return [r["text"] for r in self.logs if needle in r["text"]]

    def tail(self) -> str:
        """The end of the child's output, for assertion messages."""
        return (
            f"rc={self.returncode}\nstdout:\n{self.stdout[-3000:]}\nstderr:\n{self.stderr[-3000:]}"
        )


CASES: dict[str, Case] = {}


def child(
    code: str,
    *,
    timeout: float = 20.0,
    env: dict[str, str] | None = None,
    natural_exit: bool = False,
) -> Callable[[Callable[[Outcome], None]], Callable[[Outcome], None]]:
    """Register ``code`` as the child program of the decorated test (keyed by its name).

    The test receives the child's :class:`Outcome`; a child that hung or printed no verdict fails
    the test before its own assertions run.
    """

    def register(test: Callable[[Outcome], None]) -> Callable[[Outcome], None]:
        case = Case(textwrap.dedent(code), timeout, env or {}, natural_exit)
        CASES[test.__name__] = case

        @functools.wraps(test)
        def checked(outcome: Outcome) -> None:
            require_finished(outcome, case)
            test(outcome)

        return checked

    return register


def require_finished(o: Outcome, case: Case) -> None:
    """Fail when the child hung, or ended without a verdict when one was due."""
    if o.hung:
        pytest.fail(
            f"the child hung (killed after {case.timeout:g}s; stacks below when faulthandler "
            f"fired)\n{o.tail()}"
        )
    if not o.verdict and not case.natural_exit:
        pytest.fail(f"the child printed no verdict\n{o.tail()}")


def _program(case: Case) -> str:
    hang_after = max(1.0, case.timeout - 2.0)
    body = PRELUDE.replace("__HANG_AFTER__", repr(hang_after)) + "\n" + case.code
    if not case.natural_exit:
        body += "\n_finish()\n"
    return body


def _child_env(case: Case) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("ASYNCBRIDGE_") and k not in ("PYTHONASYNCIODEBUG", "PYTHONWARNINGS")
    }
    env["PYTHONPATH"] = str(UNDER_TEST)
    env.update(case.env)
    return env


def run_case(case: Case) -> Outcome:
    """Run one child program to its end or its hard timeout (then its process group is killed)."""
    started = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-c", _program(case)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        errors="replace",
        cwd=str(UNDER_TEST),
        env=_child_env(case),
        start_new_session=True,
    )
    hung = False
    try:
        out, errtext = proc.communicate(timeout=case.timeout)
    except subprocess.TimeoutExpired:
        hung = True
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        out, errtext = proc.communicate(timeout=10)
    seconds = time.monotonic() - started
    if "Timeout (0:" in errtext:  # faulthandler fired: the child was stuck
        hung = True
    verdict: dict[str, Any] = {}
    logs: list[dict[str, Any]] = []
    warns: list[dict[str, Any]] = []
    problems: list[str] = []
    for line in out.splitlines():
        kind, _, payload = line.partition(" ")
        if kind not in ("VERDICT", "LOG", "WARN", "UNRAISABLE", "THREADEXC"):
            continue
        try:
            data = json.loads(payload)
        except ValueError:
            problems.append(f"unparsable {kind} line: {payload[:200]}")
            continue
        if kind == "VERDICT":
            verdict.update(data)
        elif kind == "LOG":
            logs.append(data)
        elif kind == "WARN":
            warns.append(data)
        else:
            problems.append(f"{kind} {data}")
    return Outcome(verdict, logs, warns, problems, proc.returncode, out, errtext, hung, seconds)


@pytest.fixture(scope="module")
def _prefetched(
    request: pytest.FixtureRequest,
) -> Iterator[dict[str, concurrent.futures.Future[Outcome]]]:
    """Start the child programs of every selected test of this module, a few at a time."""
    module = sys.modules[__name__]
    names = [
        item.name
        for item in request.session.items
        if getattr(item, "module", None) is module and item.name in CASES
    ]
    pool = concurrent.futures.ThreadPoolExecutor(PARALLEL, thread_name_prefix="adversarial")
    futures = {name: pool.submit(run_case, CASES[name]) for name in names}
    try:
        yield futures
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


@pytest.fixture
def outcome(
    request: pytest.FixtureRequest, _prefetched: dict[str, concurrent.futures.Future[Outcome]]
) -> Outcome:
    """The finished child program of the requesting test (started early when prefetched)."""
    name = request.node.name
    future = _prefetched.get(name)
    return future.result() if future is not None else run_case(CASES[name])


def assert_quiet(o: Outcome) -> None:
    """Nothing went wrong on the side: no warning, unraisable error, thread death or log error."""
    assert not [w for w in o.warnings if "fork" not in w["message"]], o.warnings
    assert not o.problems, o.problems
    assert not o.log_lines("LOGGING-ERROR"), o.log_lines("LOGGING-ERROR")
    asyncio_trouble = [
        r["text"]
        for r in o.logs
        if r["logger"] == "asyncio" and r["level"] in ("ERROR", "CRITICAL", "WARNING")
    ]
    assert not asyncio_trouble, asyncio_trouble


def balanced(counts: dict[str, Any]) -> bool:
    """The accounting invariant over a ``counts()`` dict from a child."""
    parts = ("completed", "failed", "timed_out", "cancelled", "pending", "running")
    return bool(counts["accepted"] == sum(counts[k] for k in parts))


def report_lines(o: Outcome) -> list[str]:
    """The logged shutdown report lines."""
    return [r["msg"] for r in o.logs if "asyncbridge shutdown of pid" in r["msg"]]


# ---------------------------------------------------------------------------------------------
# Signal handlers re-entering the bridge
# ---------------------------------------------------------------------------------------------


@child(
    """
    from asyncbridge import Bridge
    b = Bridge(max_pending=1, on_full="block", block_timeout=0.0)
    b.run_soon(forever())
    handler_calls = itertools.count()

    def handler(signum, frame):
        next(handler_calls)
        b.run_soon(forever())  # the backlog is full: waits (0 s) for room, then drops

    signal.signal(signal.SIGALRM, handler)
    signal.setitimer(signal.ITIMER_REAL, 0.0005, 0.0005)
    calls = 0
    end = time.monotonic() + 1.0
    while time.monotonic() < end:
        calls += 1
        b.run_soon(forever())
    signal.setitimer(signal.ITIMER_REAL, 0, 0)
    s = b.stats()
    verdict(calls=1 + calls + next(handler_calls), handler_calls=next(handler_calls) - 1,
            counts=counts(s))
    """,
    timeout=15,
)
def test_run_soon_block_from_a_signal_handler_that_interrupted_run_soon_block_never_deadlocks(
    outcome: Outcome,
) -> None:
    v = outcome.verdict
    c = v["counts"]
    assert v["handler_calls"] > 100, v  # the handler did interrupt the hand-off many times
    assert c["accepted"] == 1 and c["dropped_full"] == v["calls"] - 1, v
    assert balanced(c), c


@child(
    """
    from asyncbridge import Bridge
    b = Bridge(max_pending=1, on_full="drop")
    b.run_soon(forever())
    handler_calls = itertools.count()

    def handler(signum, frame):
        next(handler_calls)
        b.run_soon(forever())

    signal.signal(signal.SIGALRM, handler)
    signal.setitimer(signal.ITIMER_REAL, 0.0002, 0.0002)
    calls = 0
    end = time.monotonic() + 1.5
    while time.monotonic() < end:
        calls += 1
        b.run_soon(forever())
    signal.setitimer(signal.ITIMER_REAL, 0, 0)
    s = b.stats()
    verdict(calls=1 + calls + next(handler_calls), handler_calls=next(handler_calls) - 1,
            counts=counts(s))
    """,
    timeout=15,
)
def test_drops_from_a_signal_handler_in_the_middle_of_a_drop_are_all_counted(
    outcome: Outcome,
) -> None:
    v = outcome.verdict
    c = v["counts"]
    assert v["handler_calls"] > 1000, v
    assert c["accepted"] + c["dropped_full"] + c["dropped_closed"] == v["calls"], v
    assert c["dropped_full"] == v["calls"] - 1, v
    assert balanced(c), c


@child(
    """
    from asyncbridge import Bridge, BacklogFull
    b = Bridge(max_pending=1, on_full="raise")
    b.run_soon(forever())
    handler_calls = itertools.count()

    def handler(signum, frame):
        next(handler_calls)
        try:
            b.submit(forever())
        except BacklogFull:
            pass

    signal.signal(signal.SIGALRM, handler)
    signal.setitimer(signal.ITIMER_REAL, 0.0002, 0.0002)
    calls = raised = 0
    end = time.monotonic() + 1.0
    while time.monotonic() < end:
        calls += 1
        try:
            b.run_soon(forever())
        except BacklogFull:
            raised += 1
    signal.setitimer(signal.ITIMER_REAL, 0, 0)
    s = b.stats()
    verdict(calls=1 + calls + next(handler_calls), raised=raised, main_calls=calls,
            counts=counts(s))
    """,
    timeout=15,
)
def test_backlog_full_refusals_raised_in_main_and_in_a_signal_handler_are_all_counted(
    outcome: Outcome,
) -> None:
    v = outcome.verdict
    c = v["counts"]
    assert v["raised"] == v["main_calls"], v
    assert c["accepted"] + c["dropped_full"] == v["calls"], v
    assert balanced(c), c


@child(
    """
    from asyncbridge import Bridge
    b = Bridge()
    N = 20
    for _ in range(N):
        b.run_soon(nap(0.2))
    fired = {}

    def handler(signum, frame):
        if fired:
            return
        chain, f = [], frame
        while f is not None and len(chain) < 6:
            chain.append((f.f_code.co_filename, f.f_code.co_name))
            f = f.f_back
        if not any("asyncbridge" in filename for filename, _ in chain):
            return  # wait until the signal interrupts a frame inside the bridge
        fired["chain"] = [name for _, name in chain]
        signal.setitimer(signal.ITIMER_REAL, 0, 0)
        t0 = time.monotonic()
        fired["report"] = info(b.shutdown(timeout=3))
        fired["elapsed"] = time.monotonic() - t0

    signal.signal(signal.SIGALRM, handler)
    signal.setitimer(signal.ITIMER_REAL, 0.001, 0.0003)
    end = time.monotonic() + 3
    while not fired and time.monotonic() < end:
        b.stats()
        b.run_soon(quick())
    signal.setitimer(signal.ITIMER_REAL, 0, 0)
    verdict(**fired)
    """,
    timeout=20,
)
def test_shutdown_from_a_signal_handler_that_interrupted_a_bridge_call_drains_cleanly(
    outcome: Outcome,
) -> None:
    v = outcome.verdict
    assert "report" in v, f"the signal never interrupted a bridge frame: {v}"
    r = v["report"]
    assert r["counts"]["completed"] == r["counts"]["accepted"], (v["chain"], r)
    assert r["clean"] and r["abandoned"] == 0, (v["chain"], r)
    assert v["elapsed"] < 2.5, (v["chain"], r)  # the work takes 0.2 s; the deadline is 3 s


@child(
    """
    import asyncbridge
    asyncbridge.install_signal_handlers()
    for _ in range(3):
        asyncbridge.run_soon(nap(0.6))
    threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGTERM)).start()
    t0 = time.monotonic()
    r = asyncbridge.shutdown(timeout=3)
    verdict(returned=True, elapsed=time.monotonic() - t0, report=info(r))
    """,
    timeout=15,
    natural_exit=True,
)
def test_sigterm_during_shutdown_with_signal_handlers_installed_keeps_the_real_report(
    outcome: Outcome,
) -> None:
    o = outcome
    assert o.returncode in (0, -signal.SIGTERM), o.tail()
    lines = report_lines(o)
    assert len(lines) == 1, (lines, o.tail())
    assert "completed=3" in lines[0] and "cancelled=0" in lines[0], lines
    assert not o.log_lines("stuck"), o.log_lines("stuck")
    if o.returncode == 0:
        assert o.verdict["report"]["counts"]["completed"] == 3, o.verdict
    assert o.seconds < 10, o.seconds


@child(
    """
    import asyncbridge
    asyncbridge.install_signal_handlers()
    for _ in range(3):
        asyncbridge.run_soon(nap(0.6))
    interrupt_main_after(0.2)
    t0 = time.monotonic()
    try:
        r = asyncbridge.shutdown(timeout=3)
        verdict(keyboard_interrupt=False, report=info(r))
    except KeyboardInterrupt:
        verdict(keyboard_interrupt=True)
    verdict(elapsed=time.monotonic() - t0, after=counts(asyncbridge.stats()))
    """,
    timeout=15,
)
def test_ctrl_c_during_shutdown_with_signal_handlers_installed_keeps_the_real_report(
    outcome: Outcome,
) -> None:
    o = outcome
    lines = report_lines(o)
    assert len(lines) == 1, (lines, o.tail())
    assert "completed=3" in lines[0] and "cancelled=0" in lines[0], lines
    assert o.verdict["after"]["completed"] == 3, o.verdict
    assert not o.log_lines("stuck"), o.log_lines("stuck")


@child(
    """
    from asyncbridge import Bridge
    hook = {}

    def on_error(exc, name):
        t0 = time.monotonic()
        hook["report"] = info(b.shutdown(timeout=5))
        hook["elapsed"] = time.monotonic() - t0

    async def fail_later():
        await asyncio.sleep(0.2)
        raise ValueError("expected")

    b = Bridge(on_error=on_error)
    b.run_soon(fail_later())
    for _ in range(3):
        b.run_soon(nap(0.4))
    time.sleep(0.05)
    t0 = time.monotonic()
    r = b.shutdown(timeout=3)
    verdict(report=info(r), elapsed=time.monotonic() - t0, hook=hook)
    """,
    timeout=15,
)
def test_shutdown_from_on_error_while_another_thread_drains_returns_at_once_and_drains_all(
    outcome: Outcome,
) -> None:
    v = outcome.verdict
    r, hook = v["report"], v["hook"]
    c = r["counts"]
    assert (c["completed"], c["failed"], c["cancelled"]) == (3, 1, 0), r
    assert r["abandoned"] == 0 and r["clean"], r
    assert v["elapsed"] < 2.0, v
    assert hook["elapsed"] < 0.5, hook
    # The hook's report is true: marked not final, or not claiming a clean end.
    assert hook["report"]["final"] is False or not hook["report"]["clean"], hook


@child(
    """
    from asyncbridge import Bridge
    b = Bridge()
    inner = {}

    async def shut_down_from_the_loop():
        await asyncio.sleep(0.2)
        t0 = time.monotonic()
        inner["report"] = info(b.shutdown(timeout=5))
        inner["elapsed"] = time.monotonic() - t0

    b.run_soon(shut_down_from_the_loop())
    for _ in range(3):
        b.run_soon(nap(0.4))
    time.sleep(0.05)
    t0 = time.monotonic()
    r = b.shutdown(timeout=3)
    verdict(report=info(r), elapsed=time.monotonic() - t0, inner=inner)
    """,
    timeout=15,
)
def test_shutdown_from_a_coroutine_while_another_thread_drains_returns_at_once_and_drains_all(
    outcome: Outcome,
) -> None:
    v = outcome.verdict
    r, inner = v["report"], v["inner"]
    assert r["counts"]["completed"] == 4 and r["clean"] and r["abandoned"] == 0, r
    assert v["elapsed"] < 2.0, v
    assert inner["elapsed"] < 0.5, inner
    assert inner["report"]["final"] is False or not inner["report"]["clean"], inner


@child(
    """
    from asyncbridge import Bridge
    b = Bridge()
    b.run_soon(nap(2.0))
    b.run_soon(nap(2.0))
    first = {}
    t = threading.Thread(target=lambda: first.update(report=info(b.shutdown(timeout=4))))
    t.start()
    time.sleep(0.1)
    t0 = time.monotonic()
    second = info(b.shutdown(timeout=0.2))
    second_elapsed = time.monotonic() - t0
    t.join(8)
    verdict(first=first.get("report"), second=second, second_elapsed=second_elapsed)
    """,
    timeout=20,
)
def test_a_second_shutdown_caller_past_its_deadline_gets_a_true_report_never_a_false_clean_one(
    outcome: Outcome,
) -> None:
    v = outcome.verdict
    first, second = v["first"], v["second"]
    assert first is not None, v
    assert first["counts"]["completed"] == 2 and first["clean"], first
    assert v["second_elapsed"] < 0.2 + 1.5, v  # its own deadline holds
    # Two coroutines were still running when it returned: it cannot claim a clean end unless
    # it says it is not the final report.
    assert second["final"] is False or not second["clean"], second
    assert not outcome.log_lines("stuck"), outcome.log_lines("stuck")
    assert len(report_lines(outcome)) == 1, report_lines(outcome)


@child(
    """
    from asyncbridge import Bridge
    b = Bridge()
    for _ in range(4):
        b.run_soon(nap(0.3))
    results = []
    barrier = threading.Barrier(8)

    def caller():
        barrier.wait()
        t0 = time.monotonic()
        r = b.shutdown(timeout=2)
        results.append((info(r), time.monotonic() - t0))

    threads = [threading.Thread(target=caller) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(6)
    verdict(results=results)
    """,
    timeout=20,
)
def test_eight_concurrent_shutdowns_each_return_a_true_report_within_their_deadline(
    outcome: Outcome,
) -> None:
    results = outcome.verdict["results"]
    assert len(results) == 8, results
    for report, elapsed in results:
        assert elapsed < 2 + 1.5, (report, elapsed)
        if report["final"] is not False:
            assert report["counts"]["completed"] == 4 and report["clean"], report
    assert len(report_lines(outcome)) == 1, report_lines(outcome)


# ---------------------------------------------------------------------------------------------
# Durations at the edges of their type
# ---------------------------------------------------------------------------------------------


@child(
    """
    from asyncbridge import Bridge
    out = {}
    for label, value in (("inf", math.inf), ("1e10", 1e10), ("1e300", 1e300)):
        b = Bridge()
        for _ in range(3):
            b.run_soon(nap(0.1))
        t0 = time.monotonic()
        try:
            out[label] = {"report": info(b.shutdown(value)), "elapsed": time.monotonic() - t0}
        except BaseException as exc:
            out[label] = {"error": err(exc)}
    verdict(**out)
    """,
    timeout=20,
)
def test_shutdown_with_an_infinite_or_huge_deadline_drains_and_returns_a_report(
    outcome: Outcome,
) -> None:
    for label in ("inf", "1e10", "1e300"):
        got = outcome.verdict[label]
        assert "error" not in got, (label, got)
        assert got["report"]["counts"]["completed"] == 3 and got["report"]["clean"], (label, got)
        assert got["elapsed"] < 2.0, (label, got)


@child(
    """
    from asyncbridge import Bridge
    out = {}
    for label, value in (("1e10", 1e10), ("1e300", 1e300)):
        try:
            b = Bridge(drain_timeout=value)
        except (TypeError, ValueError) as exc:
            out[label] = {"refused": err(exc)}
            continue
        for _ in range(3):
            b.run_soon(nap(0.1))
        t0 = time.monotonic()
        try:
            out[label] = {"report": info(b.shutdown()), "elapsed": time.monotonic() - t0}
        except BaseException as exc:
            out[label] = {"error": err(exc)}
    verdict(**out)
    """,
    timeout=20,
)
def test_a_huge_drain_timeout_is_refused_when_configured_or_honoured_at_shutdown(
    outcome: Outcome,
) -> None:
    for label in ("1e10", "1e300"):
        got = outcome.verdict[label]
        assert "error" not in got, (label, got)
        if "refused" in got:
            assert "drain_timeout" in got["refused"]["msg"], (label, got)
        else:
            assert got["report"]["counts"]["completed"] == 3 and got["report"]["clean"], got


@child(
    """
    from asyncbridge import Bridge
    b = Bridge()
    out = {}
    for label, value in (("inf", math.inf), ("1e10", 1e10)):
        for _ in range(3):
            b.run_soon(nap(0.1))
        t0 = time.monotonic()
        try:
            out[label] = {"idle": b.drain(value), "elapsed": time.monotonic() - t0}
        except BaseException as exc:
            out[label] = {"error": err(exc)}
    verdict(**out, after=counts(b.stats()))
    """,
    timeout=15,
)
def test_drain_with_an_infinite_or_huge_timeout_waits_for_idle_and_returns_true(
    outcome: Outcome,
) -> None:
    v = outcome.verdict
    for label in ("inf", "1e10"):
        assert v[label].get("idle") is True, (label, v[label])
        assert v[label]["elapsed"] < 2.0, v[label]
    assert v["after"]["completed"] == 6, v


@child(
    """
    from asyncbridge import Bridge
    b = Bridge()
    out = {}
    for label, value in (("inf", math.inf), ("1e10", 1e10), ("1e300", 1e300)):
        try:
            out[label] = {"result": b.run(nap(0.1, 42), timeout=value)}
        except BaseException as exc:
            out[label] = {"error": err(exc)}
    time.sleep(0.3)  # a coroutine that run() left behind would still be running now
    verdict(**out, after=counts(b.stats()))
    """,
    timeout=15,
)
def test_run_with_an_infinite_or_huge_timeout_returns_the_result_and_leaves_nothing_running(
    outcome: Outcome,
) -> None:
    v = outcome.verdict
    for label in ("inf", "1e10", "1e300"):
        assert v[label] == {"result": 42}, (label, v[label])
    assert v["after"]["running"] == 0 and v["after"]["completed"] == 3, v


@child(
    """
    from asyncbridge import Bridge
    out = {}
    for api in ("shutdown", "drain", "run"):
        for label, value in (("nan", math.nan), ("str", "1"), ("bool", True)):
            b = Bridge()
            b.run_soon(nap(0.05))
            t0 = time.monotonic()
            try:
                if api == "shutdown":
                    res = info(b.shutdown(value))
                elif api == "drain":
                    res = b.drain(value)
                else:
                    res = b.run(nap(0.05, 7), timeout=value)
                got = {"returned": res}
            except BaseException as exc:
                got = {"error": err(exc)}
            got["elapsed"] = time.monotonic() - t0
            # The bridge is still usable and drains everything afterwards.
            after = b.shutdown(2)
            got["after"] = info(after)
            out[f"{api}-{label}"] = got
    verdict(**out)
    """,
    timeout=20,
)
def test_a_timeout_that_is_nan_or_not_a_number_gets_a_clear_error_and_leaves_the_bridge_whole(
    outcome: Outcome,
) -> None:
    for key, got in outcome.verdict.items():
        assert got["elapsed"] < 1.0, (key, got)
        if "error" in got:
            assert got["error"]["type"] in ("TypeError", "ValueError"), (key, got)
            assert "timeout" in got["error"]["msg"], (key, got)
        after = got["after"]
        assert balanced(after["counts"]), (key, after)
        assert after["counts"]["pending"] == after["counts"]["running"] == 0, (key, after)
        assert after["abandoned"] == 0, (key, after)
    assert_quiet(outcome)


@child(
    """
    from asyncbridge import Bridge
    b = Bridge(max_pending=1, on_full="block", block_timeout=1e300)
    b.run_soon(nap(0.3))
    t0 = time.monotonic()
    accepted = b.run_soon(nap(0.01))
    waited = time.monotonic() - t0
    b.run_soon(nap(0.2))
    t0 = time.monotonic()
    future = b.submit(nap(0.01, 5))
    submit_waited = time.monotonic() - t0
    verdict(accepted=accepted, waited=waited, submit_waited=submit_waited,
            result=future.result(5), idle=b.drain(5), after=counts(b.stats()))
    """,
    timeout=15,
)
def test_a_block_timeout_of_1e300_waits_for_room_then_accepts(outcome: Outcome) -> None:
    v = outcome.verdict
    assert v["accepted"] is True and v["result"] == 5 and v["idle"] is True, v
    assert 0.1 < v["waited"] < 2.0 and 0.05 < v["submit_waited"] < 2.0, v
    assert v["after"]["completed"] == 4 and balanced(v["after"]), v


@child(
    """
    from asyncbridge import Bridge
    errors = []
    def on_error(exc, name):
        errors.append((type(exc).__name__, name))
    b = Bridge(task_timeout=5e-324, on_error=on_error)
    for _ in range(20):
        b.run_soon(nap(0.05))
    for _ in range(20):
        b.run_soon(quick())
    idle = b.drain(5)
    verdict(idle=idle, counts=counts(b.stats()), errors=errors)
    """,
    timeout=15,
)
def test_the_smallest_task_timeout_times_out_waiting_work_and_lets_instant_work_complete(
    outcome: Outcome,
) -> None:
    v = outcome.verdict
    c = v["counts"]
    assert v["idle"] is True, v
    assert (c["timed_out"], c["completed"], c["failed"]) == (20, 20, 0), c
    assert balanced(c), c
    assert v["errors"] == [["TimeoutError", "nap"]] * 20, v["errors"]


@child(
    """
    from asyncbridge import Bridge
    b = Bridge(max_pending=1, max_concurrency=1, on_full="block", block_timeout=10)
    order = []

    async def job(tag):
        await asyncio.sleep(0.002)
        order.append(tag)

    def producer(k):
        return [b.run_soon(job((k, i))) for i in range(10)]

    def runner(k):
        return [b.run(nap(0.001, (k, i)), timeout=10) for i in range(5)]

    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        produced = [pool.submit(producer, k) for k in range(4)]
        ran = [pool.submit(runner, k) for k in range(2)]
        produced = [f.result(20) for f in produced]
        ran = [f.result(20) for f in ran]
    idle = b.drain(5)
    per_producer = {k: [i for (kk, i) in order if kk == k] for k in range(4)}
    verdict(produced=produced, ran=ran, idle=idle, per_producer=per_producer,
            counts=counts(b.stats()))
    """,
    timeout=20,
)
def test_max_concurrency_1_with_max_pending_1_and_block_runs_everything_in_order(
    outcome: Outcome,
) -> None:
    v = outcome.verdict
    c = v["counts"]
    assert v["produced"] == [[True] * 10] * 4, v["produced"]
    assert v["ran"] == [[[k, i] for i in range(5)] for k in range(2)], v["ran"]
    assert v["idle"] is True, v
    assert c["completed"] == 50 and c["dropped_full"] == 0 and balanced(c), c
    for k, seen in v["per_producer"].items():
        assert seen == list(range(10)), (k, seen)  # each thread's hand-offs run in its order
