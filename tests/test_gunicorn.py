"""Unit tests of asyncbridge.gunicorn's hooks, with gunicorn's own validation and fake workers."""

from __future__ import annotations

import asyncio
import logging
import os
import pickle
import signal
import time
from collections.abc import Callable, Iterator
from types import SimpleNamespace
from typing import Any

import pytest
from gunicorn.config import Config  # type: ignore[import-untyped]
from gunicorn.workers.ggevent import GeventWorker  # type: ignore[import-untyped]

import asyncbridge
from asyncbridge import Bridge
from asyncbridge import gunicorn as hooks
from asyncbridge._signals import EXIT_SIGNALS
from asyncbridge.gunicorn import MARGIN, QUICK_TIMEOUT, chain, drain_deadline

from .helpers import wait_child


class FakeLog:
    def __init__(self) -> None:
        self.records: list[tuple[str, str]] = []

    def _log(self, level: str, msg: str, *args: object) -> None:
        self.records.append((level, msg % args))

    def debug(self, msg: str, *args: object) -> None:
        self._log("debug", msg, *args)

    def info(self, msg: str, *args: object) -> None:
        self._log("info", msg, *args)

    def warning(self, msg: str, *args: object) -> None:
        self._log("warning", msg, *args)

    def levels(self, text: str) -> list[str]:
        return [level for level, msg in self.records if text in msg]


def fake_worker(
    *, pid: int | None = None, graceful_timeout: float = 30, timeout: float = 30, cls: type = object
) -> Any:
    worker = object.__new__(cls) if cls is not object else SimpleNamespace()
    worker.pid = os.getpid() if pid is None else pid
    worker.log = FakeLog()
    worker.cfg = SimpleNamespace(graceful_timeout=graceful_timeout, timeout=timeout)
    return worker


@pytest.fixture
def bridge() -> Iterator[Bridge]:
    b = Bridge(drain_timeout=5)
    previous = asyncbridge.set_default_bridge(b)
    # worker_int, worker_abort and worker_exit ignore exit signals from then on, as a worker on
    # its way out must; this test process is not one, so its dispositions are put back.
    dispositions = {signum: signal.getsignal(signum) for signum in EXIT_SIGNALS}
    try:
        yield b
    finally:
        b.shutdown(0)
        asyncbridge.set_default_bridge(previous)
        hooks._quick.clear()
        for signum, handler in dispositions.items():
            signal.signal(signum, handler)


HOOKS: dict[str, Callable[..., None]] = {
    "post_fork": hooks.post_fork,
    "post_worker_init": hooks.post_worker_init,
    "worker_int": hooks.worker_int,
    "worker_abort": hooks.worker_abort,
    "worker_exit": hooks.worker_exit,
}


@pytest.mark.parametrize("name", sorted(HOOKS))
def test_each_hook_passes_gunicorns_own_arity_check(name: str) -> None:
    cfg = Config()
    cfg.set(name, HOOKS[name])  # gunicorn's validator raises TypeError on a wrong arity
    assert getattr(cfg, name) is HOOKS[name]


@pytest.mark.parametrize("name", sorted(HOOKS))
def test_a_chained_hook_passes_gunicorns_arity_check(name: str) -> None:
    calls: list[tuple[object, ...]] = []
    if name in ("post_fork", "worker_exit"):

        def mine2(server: object, worker: object) -> None:
            calls.append((server, worker))

        chained = chain(HOOKS[name], mine2)
    else:

        def mine1(worker: object) -> None:
            calls.append((worker,))

        chained = chain(HOOKS[name], mine1)
    cfg = Config()
    cfg.set(name, chained)
    assert getattr(cfg, name) is chained


def test_chain_refuses_hooks_of_different_arities() -> None:
    with pytest.raises(TypeError, match="same number of arguments"):
        chain(hooks.worker_exit, hooks.worker_int)
    with pytest.raises(TypeError, match="at least one"):
        chain()
    with pytest.raises(TypeError, match="callables"):
        chain(hooks.worker_int, "worker_int")  # type: ignore[arg-type]


def test_chain_runs_every_hook_in_order_and_reraises_the_first_error() -> None:
    calls: list[str] = []

    def first(worker: object) -> None:
        calls.append("first")
        raise ValueError("first failed")

    def second(worker: object) -> None:
        calls.append("second")
        raise KeyError("second failed")

    def third(worker: object) -> None:
        calls.append("third")

    chained = chain(first, second, third)
    with pytest.raises(ValueError, match="first failed"):
        chained(object())
    assert calls == ["first", "second", "third"]
    assert chained.__name__.startswith("chain(")
    assert [part.rsplit(".", 1)[-1] for part in chained.__name__[6:-1].split(", ")] == [
        "first",
        "second",
        "third",
    ]


def test_chain_runs_the_drain_even_when_the_users_exit_hook_exits() -> None:
    calls: list[str] = []

    def users(server: object, worker: object) -> None:
        calls.append("users")
        raise SystemExit(1)

    def drain(server: object, worker: object) -> None:
        calls.append("drain")

    with pytest.raises(SystemExit):
        chain(users, drain)(object(), object())
    assert calls == ["users", "drain"]


@pytest.mark.parametrize(
    ("drain", "graceful", "timeout", "expected"),
    [
        (10.0, 30.0, 30.0, 10.0),  # drain_timeout is the smallest
        (10.0, 5.0, 30.0, 5.0 - MARGIN),  # SIGKILL after graceful_timeout comes first
        (10.0, 30.0, 10.0, 10.0 / 2 - MARGIN),  # the heartbeat may be timeout/2 old already
        (10.0, 30.0, 0.0, 10.0),  # timeout = 0 disables gunicorn's worker timeout
        (10.0, 1.0, 30.0, 0.0),  # never negative
        (0.0, 30.0, 30.0, 0.0),
    ],
)
def test_drain_deadline_stays_below_graceful_timeout_and_the_heartbeat_timeout(
    drain: float, graceful: float, timeout: float, expected: float
) -> None:
    assert drain_deadline(drain, graceful_timeout=graceful, timeout=timeout) == expected


def test_worker_exit_in_the_master_does_nothing(bridge: Bridge) -> None:
    # gunicorn calls worker_exit in the master for a worker that is already gone (ESRCH).
    bridge.start()
    worker = fake_worker(pid=os.getpid() + 1)
    hooks.worker_exit(object(), worker)
    assert bridge.stats().loop_running
    assert bridge.run_soon(asyncio.sleep(0))
    assert worker.log.records == []


def test_worker_exit_without_a_loop_does_nothing(bridge: Bridge) -> None:
    worker = fake_worker()
    hooks.worker_exit(object(), worker)
    assert not bridge.owns_loop()
    assert worker.log.records == []


def test_worker_exit_drains_and_logs_the_report_at_info(
    bridge: Bridge, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="asyncbridge")
    worker = fake_worker()
    hooks.post_fork(object(), worker)
    assert bridge.owns_loop()
    for _ in range(5):
        assert bridge.run_soon(asyncio.sleep(0.05))
    hooks.worker_exit(object(), worker)
    stats = bridge.stats()
    assert (stats.accepted, stats.completed, stats.cancelled) == (5, 5, 0)
    assert not stats.loop_running
    assert worker.log.levels("asyncbridge shutdown of pid") == ["info"]
    assert "deadline 5s" in worker.log.records[-1][1]
    # Once, on gunicorn's logger: not again on the "asyncbridge" logger.
    assert not [r for r in caplog.records if "shutdown of pid" in r.getMessage()]


async def _forever() -> None:
    await asyncio.sleep(60)


def test_worker_int_shortens_the_drain_logs_pending_and_exit_warns(bridge: Bridge) -> None:
    worker = fake_worker()
    hooks.post_fork(object(), worker)
    for _ in range(3):
        assert bridge.run_soon(_forever())
    assert bridge.run_soon(asyncio.sleep(0.2))
    deadline = time.monotonic() + 5
    while bridge.stats().running < 4 and time.monotonic() < deadline:
        time.sleep(0.01)
    hooks.worker_int(worker)
    # A second exit signal (a terminal's Ctrl-C reaches the whole group, then the master's
    # SIGQUIT) must not run gunicorn's handler again inside the exit.
    assert all(signal.getsignal(s) == signal.SIG_IGN for s in EXIT_SIGNALS)
    assert worker.log.levels("SIGINT/SIGQUIT") == ["info"]
    notice = worker.log.records[-1][1]
    assert f"draining for at most {QUICK_TIMEOUT:g}s" in notice
    assert "0 pending and 4 running" in notice
    hooks.worker_exit(object(), worker)
    stats = bridge.stats()
    assert (stats.accepted, stats.completed, stats.cancelled) == (4, 1, 3)
    assert worker.log.levels("asyncbridge shutdown of pid") == ["warning"]
    report = worker.log.records[-1][1]
    assert f"deadline {QUICK_TIMEOUT:g}s" in report
    assert "_forever x3" in report


def test_worker_int_before_the_loop_starts_still_shortens_the_drain(bridge: Bridge) -> None:
    # SIGQUIT can reach a worker that is still booting, before post_worker_init (gevent).
    worker = fake_worker()
    hooks.worker_int(worker)
    assert worker.log.levels("0 pending and 0 running") == ["info"]
    hooks.post_worker_init(worker)
    assert bridge.run_soon(_forever())
    hooks.worker_exit(object(), worker)
    assert bridge.stats().cancelled == 1
    assert f"deadline {QUICK_TIMEOUT:g}s" in worker.log.records[-1][1]


def test_worker_abort_cancels_everything_at_once(bridge: Bridge) -> None:
    worker = fake_worker()
    hooks.post_fork(object(), worker)
    assert bridge.run_soon(_forever())
    hooks.worker_abort(worker)
    assert worker.log.levels("SIGABRT") == ["info"]
    hooks.worker_exit(object(), worker)
    stats = bridge.stats()
    assert (stats.accepted, stats.cancelled) == (1, 1)
    assert "deadline 0s" in worker.log.records[-1][1]


def test_post_fork_in_a_forked_child_starts_a_loop_of_its_own(bridge: Bridge) -> None:
    bridge.start()
    parent_loop = bridge.get_loop()
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report, never return into pytest
        code = 1
        try:
            worker = fake_worker()
            hooks.post_fork(object(), worker)
            child_loop = bridge.get_loop()
            result = bridge.run(asyncio.sleep(0, "ran"), timeout=5)
            hooks.worker_exit(object(), worker)
            facts = {
                "new_loop": child_loop is not parent_loop,
                "result": result,
                "completed": bridge.stats().completed,
                "pid": bridge.stats().pid == os.getpid(),
            }
            os.write(write_fd, pickle.dumps(facts))
            code = 0
        finally:
            os._exit(code)
    os.close(write_fd)
    code = wait_child(pid, 30)
    with os.fdopen(read_fd, "rb") as pipe:
        data = pipe.read()
    assert code == 0
    assert pickle.loads(data) == {"new_loop": True, "result": "ran", "completed": 1, "pid": True}
    # The parent's loop was left alone.
    assert bridge.get_loop() is parent_loop
    assert bridge.run(asyncio.sleep(0, "still"), timeout=5) == "still"


def test_gevent_workers_start_the_loop_after_the_patch_not_in_post_fork(bridge: Bridge) -> None:
    worker = fake_worker(cls=GeventWorker)
    hooks.post_fork(object(), worker)
    assert not bridge.owns_loop()
    hooks.post_worker_init(worker)
    assert bridge.owns_loop()
    assert worker.log.levels("in the gevent hub") == ["debug"]


def test_sync_workers_start_the_loop_in_post_fork(bridge: Bridge) -> None:
    worker = fake_worker()
    hooks.post_fork(object(), worker)
    assert bridge.owns_loop()
    hooks.post_worker_init(worker)  # idempotent
    assert bridge.stats().loop_running


def test_pre_fork_drains_and_stops_a_loop_the_master_owns_and_says_why(bridge: Bridge) -> None:
    # preload_app: the app, imported in the master, handed work off at import time.
    assert bridge.run_soon(asyncio.sleep(0.05))
    server = SimpleNamespace(log=FakeLog())
    hooks.pre_fork(server, fake_worker())
    assert not bridge.stats().loop_running
    assert bridge.stats().completed == 1  # drained, not cancelled
    (level, line), *rest = server.log.records
    assert level == "warning" and not rest
    assert "drained and stopped before forking workers" in line
    assert "completed=1" in line
    hooks.pre_fork(server, fake_worker())  # the next worker's fork: nothing more to do or say
    assert len(server.log.records) == 1


def test_pre_fork_without_a_loop_in_the_master_does_nothing(bridge: Bridge) -> None:
    server = SimpleNamespace(log=FakeLog())
    hooks.pre_fork(server, fake_worker())
    assert server.log.records == []
    assert bridge.run_soon(asyncio.sleep(0))  # the bridge is not closed by it
