"""asyncbridge.uwsgi without uWSGI: a stand-in ``uwsgi`` module in sys.modules.

The real server is exercised in tests/e2e/test_uwsgi.py; these pin down the hook chaining, the
threads check and the exit deadline.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import types
from collections.abc import Iterator
from typing import Any

import pytest

import asyncbridge.uwsgi
from asyncbridge import AsyncBridgeError, Bridge
from asyncbridge.uwsgi import EXIT_MARGIN, exit_deadline, install, worker_reload_mercy

from .helpers import wait_child

# Fork tests run in a threaded process on purpose; Python 3.12+ warns about exactly that.
FORK_WARNING = "ignore:This process .* is multi-threaded, use of fork:DeprecationWarning"


class FakeUwsgi(types.ModuleType):
    """The parts of uWSGI's embedded ``uwsgi`` module that install() reads and writes."""

    def __init__(self, *, worker_id: int = 0, has_threads: int = 1, **opt: Any) -> None:
        super().__init__("uwsgi")
        self.has_threads = has_threads
        self.opt: dict[str, Any] = {k.replace("_", "-"): v for k, v in opt.items()}
        self._worker_id = worker_id
        self.post_fork_hook: Any = None
        self.atexit: Any = None

    def worker_id(self) -> int:
        return self._worker_id

    def masterpid(self) -> int:
        return os.getpid()


EXIT_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)


@pytest.fixture
def bridge() -> Iterator[Bridge]:
    b = Bridge(drain_timeout=10)
    try:
        yield b
    finally:
        b.shutdown(5)


def use(monkeypatch: pytest.MonkeyPatch, fake: types.ModuleType | None) -> None:
    # None in sys.modules makes `import uwsgi` raise ImportError, as outside uWSGI.
    monkeypatch.setitem(sys.modules, "uwsgi", fake)


def fresh_import(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    """Let ``name`` be imported anew, and removed from sys.modules after the test."""
    monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.delitem(sys.modules, name)


async def noop() -> None:
    await asyncio.sleep(0)


def test_outside_uwsgi_install_is_a_no_op(monkeypatch: pytest.MonkeyPatch, bridge: Bridge) -> None:
    use(monkeypatch, None)
    assert install(bridge) is False
    assert bridge.stats().loop_running is False
    # Still a working bridge: it starts on first use, as in any plain process.
    assert bridge.run(noop(), timeout=5) is None


def test_refuses_without_threads_and_names_the_fix(
    monkeypatch: pytest.MonkeyPatch, bridge: Bridge
) -> None:
    fake = FakeUwsgi(has_threads=0)
    use(monkeypatch, fake)
    with pytest.raises(AsyncBridgeError, match=r"Set `enable-threads = true`"):
        install(bridge)
    assert fake.post_fork_hook is None
    assert fake.atexit is None
    # Nothing was recorded: once threads are on, install() works.
    fake.has_threads = 1
    assert install(bridge) is True


def test_in_the_master_chains_post_fork_hook_and_keeps_the_users(
    monkeypatch: pytest.MonkeyPatch, bridge: Bridge
) -> None:
    fake = FakeUwsgi()
    calls: list[str] = []
    fake.post_fork_hook = lambda: calls.append("user")
    use(monkeypatch, fake)
    assert install(bridge) is True
    assert bridge.stats().loop_running is False  # never at import time in the master
    fake.post_fork_hook()
    assert calls == ["user"]
    assert bridge.owns_loop()
    assert bridge.run(noop(), timeout=5) is None


def test_in_a_worker_starts_now_and_leaves_post_fork_hook_alone(
    monkeypatch: pytest.MonkeyPatch, bridge: Bridge
) -> None:
    fake = FakeUwsgi(worker_id=1)
    use(monkeypatch, fake)
    assert install(bridge) is True
    assert bridge.stats().loop_running is True
    assert fake.post_fork_hook is None
    assert callable(fake.atexit)


def test_install_twice_chains_once(monkeypatch: pytest.MonkeyPatch, bridge: Bridge) -> None:
    fake = FakeUwsgi()
    calls: list[str] = []
    fake.atexit = lambda: calls.append("user atexit")
    use(monkeypatch, fake)
    install(bridge)
    hooks = (fake.post_fork_hook, fake.atexit)
    assert install(bridge) is True
    assert (fake.post_fork_hook, fake.atexit) == hooks
    fake.atexit()
    assert calls == ["user atexit"]


@pytest.mark.filterwarnings(FORK_WARNING)
def test_post_fork_in_a_child_replaces_the_loop_inherited_from_the_master(
    monkeypatch: pytest.MonkeyPatch, bridge: Bridge
) -> None:
    fake = FakeUwsgi()
    use(monkeypatch, fake)
    install(bridge)
    # The preload trap: the app used the bridge at import time, in the master.
    assert bridge.run(noop(), timeout=5) is None
    parent_pid = os.getpid()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            fake.post_fork_hook()
            ok = bridge.stats().pid == os.getpid() != parent_pid and bridge.stats().loop_running
            ok = ok and bridge.run(noop(), timeout=5) is None
            fake.atexit()
            report = bridge.shutdown()
            code = 0 if ok and report.stats.completed == 1 and report.clean else 2
        finally:
            os._exit(code)
    assert wait_child(pid, 30) == 0
    # The parent's loop was not touched by the child.
    assert bridge.stats().loop_running is True
    assert bridge.stats().completed == 1


def test_atexit_runs_the_users_hook_then_drains_within_mercy(
    monkeypatch: pytest.MonkeyPatch, bridge: Bridge, caplog: pytest.LogCaptureFixture
) -> None:
    fake = FakeUwsgi(worker_id=1, worker_reload_mercy=b"7")
    calls: list[str] = []

    def user_atexit() -> None:
        # Work handed over in the user's own exit hook is drained too.
        calls.append("user")
        assert bridge.run_soon(asyncio.sleep(0.1))

    fake.atexit = user_atexit
    use(monkeypatch, fake)
    with caplog.at_level(logging.INFO, logger="asyncbridge"):
        install(bridge)
        assert bridge.run_soon(asyncio.sleep(0.1))
        fake.atexit()
    report = bridge.shutdown()  # idempotent: the report of the drain done in atexit
    assert calls == ["user"]
    assert report.timeout == 7 - EXIT_MARGIN
    assert (report.stats.accepted, report.stats.completed, report.stats.cancelled) == (2, 2, 0)
    assert "drain for at most 5s" in caplog.text  # drain_timeout 10 does not fit in mercy 7
    assert f"(deadline {7 - EXIT_MARGIN:g}s): accepted=2 completed=2" in caplog.text


def test_atexit_ignores_further_exit_signals_while_the_worker_drains(
    monkeypatch: pytest.MonkeyPatch, bridge: Bridge
) -> None:
    fake = FakeUwsgi(worker_id=1)
    seen: list[object] = []
    fake.atexit = lambda: seen.extend(signal.getsignal(s) for s in EXIT_SIGNALS)
    use(monkeypatch, fake)
    install(bridge)
    fake.atexit()
    # Already ignored while the user's hook and the drain run: a second Ctrl-C reaching the
    # worker would otherwise re-enter uWSGI's exit handler and end it mid-drain.
    assert seen == [signal.SIG_IGN] * len(EXIT_SIGNALS)


def test_atexit_in_a_process_without_its_own_loop_does_not_shut_down(
    monkeypatch: pytest.MonkeyPatch, bridge: Bridge
) -> None:
    fake = FakeUwsgi()
    calls: list[str] = []
    fake.atexit = lambda: calls.append("user")
    use(monkeypatch, fake)
    install(bridge)
    before = [signal.getsignal(s) for s in EXIT_SIGNALS]
    fake.atexit()  # the master at exit: it never started a loop
    assert calls == ["user"]
    assert [signal.getsignal(s) for s in EXIT_SIGNALS] == before
    bridge.start()  # not closed: a shutdown here would have made this raise BridgeClosed
    assert bridge.stats().loop_running is True


def test_atexit_drains_even_when_the_users_hook_raises(
    monkeypatch: pytest.MonkeyPatch, bridge: Bridge
) -> None:
    fake = FakeUwsgi(worker_id=1)

    def broken() -> None:
        raise ValueError("user hook failed")

    fake.atexit = broken
    use(monkeypatch, fake)
    install(bridge)
    bridge.run_soon(asyncio.sleep(0.05))
    with pytest.raises(ValueError, match="user hook failed"):
        fake.atexit()
    assert bridge.stats().completed == 1
    assert bridge.shutdown().timeout == 10.0


def test_post_fork_chains_atexit_again_when_the_app_replaced_it(
    monkeypatch: pytest.MonkeyPatch, bridge: Bridge
) -> None:
    fake = FakeUwsgi()
    use(monkeypatch, fake)
    install(bridge)
    calls: list[str] = []
    fake.atexit = lambda: calls.append("set after install")
    fake.post_fork_hook()
    bridge.run_soon(asyncio.sleep(0.05))
    fake.atexit()
    assert calls == ["set after install"]
    assert bridge.stats().completed == 1
    assert bridge.stats().loop_running is False  # drained and stopped by the re-chained hook


def test_uwsgidecorators_imported_first_keeps_its_postfork_chain(
    monkeypatch: pytest.MonkeyPatch, bridge: Bridge
) -> None:
    """With the real uwsgidecorators module (from the pyuwsgi wheel) over the stand-in."""
    fake = FakeUwsgi()
    use(monkeypatch, fake)
    fresh_import(monkeypatch, "uwsgidecorators")
    uwsgidecorators = pytest.importorskip("uwsgidecorators")
    calls: list[str] = []
    uwsgidecorators.postfork(lambda: calls.append("postfork"))
    install(bridge)
    fake.post_fork_hook()
    assert calls == ["postfork"]
    assert bridge.stats().loop_running is True


def test_uwsgidecorators_imported_after_install_replaces_the_hook_and_start_is_lazy(
    monkeypatch: pytest.MonkeyPatch, bridge: Bridge
) -> None:
    fake = FakeUwsgi()
    use(monkeypatch, fake)
    fresh_import(monkeypatch, "uwsgidecorators")
    install(bridge)
    uwsgidecorators = pytest.importorskip("uwsgidecorators")
    calls: list[str] = []
    uwsgidecorators.postfork(lambda: calls.append("postfork"))
    fake.post_fork_hook()
    assert calls == ["postfork"]
    # The documented limitation: no eager start, so the loop starts on first use...
    assert bridge.stats().loop_running is False
    assert bridge.run(noop(), timeout=5) is None
    # ...and the exit drain is unaffected (uwsgidecorators leaves uwsgi.atexit alone).
    bridge.run_soon(asyncio.sleep(0.05))
    fake.atexit()
    assert bridge.stats().completed == 2


@pytest.mark.parametrize(
    ("opt", "mercy"),
    [
        ({}, 60.0),
        ({"worker-reload-mercy": b"7"}, 7.0),
        ({"worker-reload-mercy": [b"30", b"9"]}, 9.0),  # repeated: the last one wins
        ({"worker-reload-mercy": b"0"}, 0.0),  # checked: uWSGI then SIGKILLs at once
        ({"worker-reload-mercy": b"soon"}, 60.0),
        ({"worker-reload-mercy": True}, 60.0),
    ],
)
def test_worker_reload_mercy_reads_uwsgi_opt(opt: dict[str, Any], mercy: float) -> None:
    assert worker_reload_mercy(opt) == mercy


@pytest.mark.parametrize(
    ("drain_timeout", "mercy", "deadline"),
    [(10.0, b"60", 10.0), (10.0, b"7", 7 - EXIT_MARGIN), (10.0, b"1", 0.0), (0.0, b"60", 0.0)],
)
def test_exit_deadline_stays_under_drain_timeout_and_mercy(
    drain_timeout: float, mercy: bytes, deadline: float
) -> None:
    assert exit_deadline(drain_timeout, {"worker-reload-mercy": mercy}) == deadline


def test_public_names() -> None:
    assert sorted(asyncbridge.uwsgi.__all__) == asyncbridge.uwsgi.__all__
    for name in asyncbridge.uwsgi.__all__:
        assert hasattr(asyncbridge.uwsgi, name)
