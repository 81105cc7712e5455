"""asyncbridge.uwsgi under a real uWSGI (the pyuwsgi wheel): zero loss across recycling and stop.

Every server starts from examples/uwsgi.ini's [asyncbridge] section plus a socket, the app and a
few overrides, so the example config is what is tested.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from .procs import ROOT, Server, free_port, http_get, running, wait_http
from .sink import Sink, wait_until

pytestmark = pytest.mark.e2e

UWSGI = str(Path(sys.executable).with_name("uwsgi"))
INI = ROOT / "examples" / "uwsgi.ini"
APP = ROOT / "tests" / "e2e" / "apps" / "uwsgi_app.py"
MERCY = 7  # worker-reload-mercy for the tests
DRAIN = 6.0  # ASYNCBRIDGE_DRAIN_TIMEOUT; the exit deadline is min(6, 7 - 2) = 5
DEADLINE = 5.0
START_TIMEOUT = 30.0


@pytest.fixture
def sink() -> Iterator[Sink]:
    with Sink(delay=0.05) as s:
        yield s


def _argv(port: int, *extra: str, ini: bool = True) -> list[str]:
    base = [UWSGI, "--ini", f"{INI}:asyncbridge"] if ini else [UWSGI, "--need-app"]
    return [
        *base,
        "--http-socket",
        f"127.0.0.1:{port}",
        "--wsgi-file",
        str(APP),
        "--processes",
        "2",
        "--worker-reload-mercy",
        str(MERCY),
        *extra,
    ]


def _env(sink: Sink, out: Path, **extra: str) -> dict[str, str]:
    # Not `--env`: pyuwsgi starts Python before reading options, so os.environ never sees them.
    env = {"SINK_URL": sink.url, "OUT_DIR": str(out), "ASYNCBRIDGE_DRAIN_TIMEOUT": str(DRAIN)}
    return {**env, **extra}


def _fire(base: str, n: int, threads: int = 4) -> int:
    """Send ``n`` notify requests; return how many were accepted (every one must answer 200)."""

    def one(_: int) -> bool:
        status, body = http_get(f"{base}/notify", timeout=10)
        assert status == 200, body
        return bool(json.loads(body)["accepted"])

    with ThreadPoolExecutor(threads) as pool:
        return sum(pool.map(one, range(n)))


def _fire_through_reload(base: str, n: int) -> tuple[int, int]:
    """Send ``n`` notify requests across a reload; return (accepted answers, connection resets).

    A graceful reload re-executes the master, and a connection caught in that window may be
    reset: the client then retries, as a real one would. Whether the reset request reached a
    worker is unknowable here, so the workers' own counts are the ground truth.
    """
    accepted = resets = 0
    for _ in range(n):
        for _attempt in range(50):
            try:
                status, body = http_get(f"{base}/notify", timeout=10)
            except (ConnectionResetError, ConnectionRefusedError, http.client.RemoteDisconnected):
                resets += 1
                time.sleep(0.05)
                continue
            assert status == 200, body
            accepted += bool(json.loads(body)["accepted"])
            break
        else:
            pytest.fail("no answer within 50 attempts across the reload")
    return accepted, resets


def _command(fifo: Path, command: bytes) -> None:
    """Write to the master FIFO (O_NONBLOCK: fails at once if no master reads it)."""
    fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
    try:
        os.write(fd, command)
    finally:
        os.close(fd)


def _quit(fifo: Path) -> None:
    """Graceful shutdown: every worker finishes its request, then drains in uwsgi.atexit."""
    _command(fifo, b"q")


def _worker_stats(out: Path) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted(out.glob("stats-*.json"))]


def _worker_pids(log: str) -> set[int]:
    return {int(p) for p in re.findall(r"spawned uWSGI worker \d+ \((?:new )?pid: (\d+)", log)}


def _wait_idle(server: Server, notifications: int) -> None:
    """Wait until uWSGI has logged every notify request and each worker waits for the next one.

    uWSGI skips atexit in a worker that is still busy when a brutal stop arrives. A client has
    its response a moment before the worker logs the request, and the worker logs it a moment
    before it marks itself idle (``in_request = 0`` in ``uwsgi_close_request``): only a worker
    whose main thread sits in epoll_wait again is idle.
    """
    if not wait_until(lambda: server.output().count("GET /notify =>") >= notifications, 10):
        raise TimeoutError(
            f"uWSGI did not log {notifications} requests:\n{server.output()[-3000:]}"
        )
    pids = _worker_pids(server.output())
    if not wait_until(lambda: all(_waits_for_a_request(pid) for pid in pids), 10):
        states = {pid: _wchan(pid) for pid in pids}
        raise TimeoutError(f"a uWSGI worker stayed busy (main-thread wchan {states})")


def _wchan(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/task/{pid}/wchan").read_text()
    except OSError as exc:
        return f"unreadable: {exc}"


def _waits_for_a_request(pid: int) -> bool:
    wchan = _wchan(pid)
    if wchan in ("", "0") or wchan.startswith("unreadable"):
        return True  # this kernel does not tell: the log line is the best there is
    return wchan in ("do_epoll_wait", "ep_poll")


def _wait_settled(
    server: Server, out: Path, *, lazy_apps: bool = False, timeout: float = 30.0
) -> None:
    """Wait until both workers are up and none was respawned for a second.

    uWSGI 2.0.30's master hangs past worker-reload-mercy when a graceful stop lands while a worker
    is still starting (reproduced without asyncbridge: lazy-apps, an app that takes 2 s to import,
    `q` during the import), so the tests stop only a settled server.
    """
    deadline = time.monotonic() + timeout
    previous: frozenset[int] | None = None
    while time.monotonic() < deadline:
        log = server.output()
        done = {int(p) for p in re.findall(r"The work of process (\d+) is done", log)}
        done |= {int(w["pid"]) for w in _worker_stats(out)}
        live = frozenset(_worker_pids(log) - done)
        ready = {
            int(p) for p in re.findall(r"ready in \d+ seconds on interpreter \S+ pid: (\d+)", log)
        }
        settled = len(live) == 2 and (not lazy_apps or live <= ready)
        if settled and live == previous:
            return
        previous = live if settled else None
        time.sleep(1.0)
    raise TimeoutError(
        f"uWSGI workers did not settle within {timeout}s:\n{server.output()[-3000:]}"
    )


@pytest.mark.parametrize("lazy_apps", [False, True], ids=["preforked-app", "lazy-apps"])
def test_recycling_under_load_then_graceful_stop_loses_nothing(
    sink: Sink, tmp_path: Path, lazy_apps: bool
) -> None:
    port, fifo, out = free_port(), tmp_path / "master.fifo", tmp_path / "out"
    out.mkdir()
    extra = ["--master-fifo", str(fifo), "--max-requests", "20"]
    # No delta, and no minimum lifetime (10 s by default) before a worker may be recycled.
    extra += ["--max-requests-delta", "0", "--min-worker-lifetime", "0"]
    if lazy_apps:
        extra.append("--lazy-apps")
    with running(_argv(port, *extra), log=tmp_path / "uwsgi.log", env=_env(sink, out)) as server:
        base = f"http://127.0.0.1:{port}"
        wait_http(f"{base}/stats", START_TIMEOUT, server.proc)
        accepted = _fire(base, 200)
        _wait_settled(server, out, lazy_apps=lazy_apps)
        _quit(fifo)
        assert server.wait(30) == 0
        log = server.output()

    workers = _worker_stats(out)
    # Every worker that ever ran (2 at a time, recycled every 20 requests) drained in uwsgi.atexit
    # and wrote its stats: none skipped atexit.
    assert {w["pid"] for w in workers} == _worker_pids(log)
    assert len(workers) >= 200 // 20
    assert accepted == 200
    assert sum(w["accepted"] for w in workers) == 200
    assert sum(w["completed"] for w in workers) == 200
    assert sum(w["failed"] + w["cancelled"] + w["timed_out"] for w in workers) == 0
    assert {w["deadline"] for w in workers} == {DEADLINE}
    assert sink.received == 200
    assert sink.duplicates() == 0
    assert log.count(f"(deadline {DEADLINE:g}s): accepted=") == len(workers)
    assert "graceful shutdown triggered" in log


def test_graceful_reload_in_the_middle_of_the_load_loses_nothing(
    sink: Sink, tmp_path: Path
) -> None:
    port, fifo, out = free_port(), tmp_path / "master.fifo", tmp_path / "out"
    out.mkdir()
    # uWSGI reloads by re-executing itself; without binary-path it would start the base
    # interpreter, which lacks the pyuwsgi of this virtualenv.
    argv = _argv(port, "--master-fifo", str(fifo), "--binary-path", sys.executable)
    with running(argv, log=tmp_path / "uwsgi.log", env=_env(sink, out)) as server:
        base = f"http://127.0.0.1:{port}"
        wait_http(f"{base}/stats", START_TIMEOUT, server.proc)
        with ThreadPoolExecutor(1) as pool:
            load = pool.submit(_fire_through_reload, base, 150)
            assert wait_until(lambda: sink.received >= 30, 30)
            _command(fifo, b"r")  # graceful reload, with requests in flight
            accepted, resets = load.result(90)
        assert wait_until(lambda: "gracefully (RE)spawned uWSGI master" in server.output(), 30)
        wait_http(f"{base}/stats", START_TIMEOUT, server.proc)
        accepted += _fire(base, 150, 2)  # the new generation serves the rest for certain
        _wait_settled(server, out)
        _quit(fifo)
        assert server.wait(30) == 0
        log = server.output()

    workers = _worker_stats(out)
    assert len(workers) == 4  # two before the reload, two after
    assert {w["pid"] for w in workers} == _worker_pids(log)
    total_accepted = sum(w["accepted"] for w in workers)
    # Every answered request was accepted; a reset one may or may not have reached a worker.
    assert 300 <= total_accepted <= 300 + resets
    assert accepted == 300
    assert sum(w["completed"] for w in workers) == total_accepted
    # The reload came in the middle: both generations of workers served part of the load.
    before_reload = _worker_pids(log.split("gracefully (RE)spawned uWSGI master")[0])
    assert len(before_reload) == 2
    assert 0 < sum(w["accepted"] for w in workers if w["pid"] in before_reload) < total_accepted
    assert sink.received == total_accepted  # zero loss: everything the workers accepted arrived
    assert sink.duplicates() == 0


@pytest.mark.parametrize("order", ["before", "after"])
def test_uwsgidecorators_postfork_and_install_both_work_in_either_import_order(
    sink: Sink, tmp_path: Path, order: str
) -> None:
    port, fifo, out = free_port(), tmp_path / "master.fifo", tmp_path / "out"
    out.mkdir()
    env = _env(sink, out, APP_DECORATORS=order)
    with running(
        _argv(port, "--master-fifo", str(fifo)), log=tmp_path / "uwsgi.log", env=env
    ) as server:
        base = f"http://127.0.0.1:{port}"
        wait_http(f"{base}/stats", START_TIMEOUT, server.proc)
        status, body = http_get(f"{base}/stats")
        assert status == 200, body
        loop_running_before_first_use = json.loads(body)["loop_running"]
        accepted = _fire(base, 20)
        _wait_settled(server, out)
        _quit(fifo)
        assert server.wait(30) == 0
        log = server.output()

    pids = _worker_pids(log)
    assert len(pids) == 2
    # The user's @postfork function ran in both workers, whichever was imported first.
    assert {int(p.name.split("-")[1]) for p in out.glob("postfork-*")} == pids
    # Imported first, uwsgidecorators' chain is kept and install() adds to it: the loop starts
    # right after fork. Imported after install(), uwsgidecorators replaces uwsgi.post_fork_hook,
    # so the loop starts on first use instead; the drain at exit is unaffected.
    assert loop_running_before_first_use is (order == "before")
    workers = _worker_stats(out)
    assert accepted == 20
    assert sum(w["accepted"] for w in workers) == sum(w["completed"] for w in workers) == 20
    assert {w["deadline"] for w in workers} == {DEADLINE}
    assert sink.received == 20


def test_ctrl_c_to_the_whole_process_group_drains_idle_workers(sink: Sink, tmp_path: Path) -> None:
    """SIGINT to every process at once, as Ctrl-C in a terminal (or systemd) sends it.

    The master's brutal shutdown sends each worker its own SIGINT too. The second signal must not
    cut the first one's drain short. (Busy workers skip atexit on this path: see the guide.)
    """
    port, out = free_port(), tmp_path / "out"
    out.mkdir()
    with running(_argv(port), log=tmp_path / "uwsgi.log", env=_env(sink, out)) as server:
        base = f"http://127.0.0.1:{port}"
        wait_http(f"{base}/stats", START_TIMEOUT, server.proc)
        sink.delay = 3.0  # still in flight when the signals land
        accepted = _fire(base, 20)
        _wait_settled(server, out)
        _wait_idle(server, 20)
        os.killpg(server.pid, signal.SIGINT)
        server.wait(30)
        log = server.output()

    assert "SIGINT/SIGTERM received...killing workers..." in log
    workers = _worker_stats(out)
    assert {w["pid"] for w in workers} == _worker_pids(log)
    assert accepted == sum(w["accepted"] for w in workers) == 20
    assert sum(w["completed"] for w in workers) == 20
    assert sink.received == 20


def test_worker_without_master_drains_on_sigint(sink: Sink, tmp_path: Path) -> None:
    port, out = free_port(), tmp_path / "out"
    out.mkdir()
    argv = [*_argv(port, ini=False), "--processes", "1"]
    with running(argv, log=tmp_path / "uwsgi.log", env=_env(sink, out)) as server:
        base = f"http://127.0.0.1:{port}"
        wait_http(f"{base}/stats", START_TIMEOUT, server.proc)
        sink.delay = 0.3  # still in flight when the signal lands
        accepted = _fire(base, 20)
        _wait_idle(server, 20)
        server.signal(signal.SIGINT)
        server.wait(30)
        log = server.output()

    assert "without its master process" in log
    [worker] = _worker_stats(out)
    assert accepted == worker["accepted"] == worker["completed"] == 20
    assert worker["deadline"] == DEADLINE
    assert sink.received == 20


def test_threads_off_fails_at_startup_with_the_fix_in_the_log(sink: Sink, tmp_path: Path) -> None:
    # uWSGI 2.0.30 cannot turn Python threads off (see the next test), so the app makes
    # uwsgi.has_threads read false, as an older uWSGI without enable-threads would.
    port, out = free_port(), tmp_path / "out"
    out.mkdir()
    env = _env(sink, out, APP_FORCE_NO_THREADS="1")
    server = Server(_argv(port), log=tmp_path / "uwsgi.log", env=env)
    try:
        returncode = server.wait(30)
        log = server.output()
    finally:
        server.stop()
    assert returncode != 0  # need-app = true in the example config
    assert "AsyncBridgeError: uWSGI is running without Python threads" in log
    assert "Set `enable-threads = true`" in log
    assert not list(out.iterdir())


def test_enable_threads_false_is_a_stub_in_this_uwsgi(sink: Sink, tmp_path: Path) -> None:
    """Documented fact: since 2.0.27 threads are always on; `enable-threads = false` is ignored."""
    port, fifo, out = free_port(), tmp_path / "master.fifo", tmp_path / "out"
    out.mkdir()
    extra_ini = tmp_path / "threads-off.ini"
    extra_ini.write_text("[uwsgi]\nenable-threads = false\n")
    argv = _argv(port, "--ini", str(extra_ini), "--master-fifo", str(fifo))
    with running(argv, log=tmp_path / "uwsgi.log", env=_env(sink, out)) as server:
        base = f"http://127.0.0.1:{port}"
        wait_http(f"{base}/stats", START_TIMEOUT, server.proc)
        assert _fire(base, 5) == 5
        assert wait_until(lambda: sink.received == 5, 10)
        _wait_settled(server, out)
        _quit(fifo)
        assert server.wait(30) == 0
        log = server.output()
    assert "python threads support enabled" in log
    assert "AsyncBridgeError" not in log
