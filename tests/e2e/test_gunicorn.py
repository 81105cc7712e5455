"""asyncbridge.gunicorn with a real gunicorn master and workers, and a real aiohttp sink.

Every request of ``tests/e2e/apps/notify_app.py`` hands one notification to the bridge. Each
worker writes its final ``stats()`` to a JSON file after the adapter's ``worker_exit`` drained
it, so a test can compare what the workers accepted with what the sink received.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import statistics
import textwrap
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.procs import PYTHON, Server, free_port, http_get, running, wait_http
from tests.e2e.sink import Sink, wait_until

pytestmark = pytest.mark.e2e

APP = "tests.e2e.apps.notify_app:app"

CONF = """\
import json, os, dataclasses
import asyncbridge
from asyncbridge.gunicorn import (
    chain, post_fork, post_worker_init, worker_abort, worker_exit, worker_int,
)

def record_stats(server, worker):
    if worker.pid != os.getpid():
        return
    s = dataclasses.asdict(asyncbridge.stats())
    with open(os.path.join({stats_dir!r}, f"{{os.getpid()}}.json"), "w") as f:
        json.dump(s, f)

worker_exit = chain(worker_exit, record_stats)
bind = "127.0.0.1:{port}"
workers = {workers}
worker_class = {worker_class!r}
threads = {threads}
preload_app = {preload}
graceful_timeout = 20
timeout = 30
loglevel = "info"
control_socket_disable = True  # gunicorn 27: one shared default path for every master
{extra}
"""


@dataclass
class Load:
    """What a load generator saw: answers by status, and latencies of the 200s."""

    ok: int = 0
    errors: int = 0
    latencies: list[float] = field(default_factory=list)
    kinds: dict[str, int] = field(default_factory=dict)  # what each error was
    lock: threading.Lock = field(default_factory=threading.Lock)

    def one(self, url: str) -> None:
        started = time.monotonic()
        kind = ""
        try:
            status, _ = http_get(url, timeout=10)
        except Exception as exc:  # not only OSError: http.client's own errors count too
            status, kind = 0, type(exc).__name__
        elapsed = time.monotonic() - started
        with self.lock:
            if status == 200:
                self.ok += 1
                self.latencies.append(elapsed)
            else:
                self.errors += 1
                kind = kind or f"HTTP {status}"
                self.kinds[kind] = self.kinds.get(kind, 0) + 1


def fire(url: str, n: int, concurrency: int = 4, load: Load | None = None) -> Load:
    """Send ``n`` GETs with ``concurrency`` clients and wait for all of them."""
    load = load or Load()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(lambda _: load.one(url), range(n)))
    return load


@contextlib.contextmanager
def gunicorn(
    tmp_path: Path,
    sink: Sink,
    *,
    worker_class: str = "sync",
    workers: int = 2,
    threads: int = 1,
    preload: bool = False,
    extra: str = "",
    env: dict[str, str] | None = None,
) -> Iterator[tuple[Server, str, Path]]:
    """A gunicorn master serving notify_app; yields (server, base url, stats directory)."""
    port = free_port()
    stats_dir = tmp_path / "stats"
    stats_dir.mkdir()
    conf = tmp_path / "gunicorn.conf.py"
    conf.write_text(
        CONF.format(
            stats_dir=str(stats_dir),
            port=port,
            workers=workers,
            worker_class=worker_class,
            threads=threads,
            preload=preload,
            extra=textwrap.dedent(extra),
        )
    )
    full_env = {"NOTIFY_SINK_URL": sink.url, **(env or {})}
    argv = [PYTHON, "-m", "gunicorn", "-c", str(conf), APP]
    with running(argv, log=tmp_path / "gunicorn.log", env=full_env) as server:
        base = f"http://127.0.0.1:{port}"
        wait_http(base + "/stats", 30, server.proc)
        wait_for_workers(base, workers)
        yield server, base, stats_dir


def wait_for_workers(base: str, n: int, timeout: float = 30) -> None:
    """Wait until ``n`` distinct workers have answered: every one has booted and serves."""
    pids: set[int] = set()

    def ask(_: int) -> None:
        status, body = http_get(base + "/stats")
        if status == 200:
            pids.add(json.loads(body)["pid"])

    deadline = time.monotonic() + timeout
    with ThreadPoolExecutor(4) as pool:
        while len(pids) < n:
            assert time.monotonic() < deadline, f"only workers {pids} answered within {timeout}s"
            list(pool.map(ask, range(8)))


def stop(server: Server, signum: int = signal.SIGTERM, timeout: float = 40) -> str:
    """Signal the master, wait for it to exit, and return its log."""
    server.signal(signum)
    code = server.wait(timeout)
    out = server.output()
    assert code == 0, out[-4000:]
    return out


def worker_stats(stats_dir: Path) -> list[dict[str, int]]:
    return [json.loads(p.read_text()) for p in sorted(stats_dir.glob("*.json"))]


def total(stats: list[dict[str, int]], key: str) -> int:
    return sum(s[key] for s in stats)


def assert_balanced(stats: list[dict[str, int]]) -> None:
    for s in stats:
        parts = ("completed", "failed", "timed_out", "cancelled", "pending", "running")
        assert s["accepted"] == sum(s[k] for k in parts), s
        assert s["pending"] == s["running"] == 0, s


WORKER_KINDS = [
    pytest.param({"worker_class": "sync"}, id="sync"),
    pytest.param({"worker_class": "sync", "preload": True}, id="sync-preload"),
    pytest.param({"worker_class": "gthread", "threads": 8}, id="gthread-8"),
    pytest.param({"worker_class": "gevent"}, id="gevent"),
]


@pytest.mark.parametrize("kind", WORKER_KINDS)
def test_requests_return_before_the_sink_answers_and_every_notification_arrives(
    tmp_path: Path, kind: dict[str, Any]
) -> None:
    n = 200
    with Sink(delay=0.1) as sink, gunicorn(tmp_path, sink, **kind) as (server, base, stats_dir):
        load = fire(base + "/", n, concurrency=8)
        where = json.loads(http_get(base + "/where")[1])
        out = stop(server)
        stats = worker_stats(stats_dir)
    # gevent: the loop runs in the hub, in the requests' OS thread; others: in a thread of its own.
    assert where == {"loop_in_request_thread": kind["worker_class"] == "gevent"}
    assert load.ok == n and load.errors == 0
    # A request that waited for the sink would take at least its 100 ms delay.
    assert statistics.median(load.latencies) < 0.05, statistics.median(load.latencies)
    assert_balanced(stats)
    assert len(stats) == 2
    assert total(stats, "accepted") == n
    assert total(stats, "completed") == n
    assert sink.received == n
    assert sink.duplicates() == 0
    assert out.count("asyncbridge shutdown of pid") == 2


def test_preload_trap_app_with_its_own_loop_in_the_master_still_delivers(
    tmp_path: Path,
) -> None:
    n = 100
    with (
        Sink() as sink,
        gunicorn(tmp_path, sink, preload=True, env={"NOTIFY_TRAP": "1"}) as (
            server,
            base,
            stats_dir,
        ),
    ):
        load = fire(base + "/", n)
        started = time.monotonic()
        out = stop(server, timeout=30)
        stop_seconds = time.monotonic() - started
        stats = worker_stats(stats_dir)
    assert load.ok == n
    assert_balanced(stats)
    assert total(stats, "accepted") == total(stats, "completed") == sink.received == n
    assert sink.duplicates() == 0
    # Nothing hangs: the workers drained at once and the master did not wait out a timeout.
    assert stop_seconds < 15, out[-3000:]
    assert "WORKER TIMEOUT" not in out and "SIGKILL" not in out


def _continuous_load(url: str, load: Load, stop_event: threading.Event, clients: int) -> None:
    def client() -> None:
        while not stop_event.is_set():
            load.one(url)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    stop_event.wait()
    for t in threads:
        t.join(40)  # a request may take three 10 s socket timeouts


@pytest.mark.parametrize("hup", [False, True], ids=["recycle", "recycle-and-hup"])
def test_max_requests_recycling_under_load_then_sigterm_loses_nothing(
    tmp_path: Path, hup: bool
) -> None:
    extra = """
    max_requests = 50
    max_requests_jitter = 10
    """
    with (
        Sink(delay=0.02) as sink,
        gunicorn(tmp_path, sink, extra=extra) as (server, base, stats_dir),
    ):
        load = Load()
        done = threading.Event()
        loader = threading.Thread(target=_continuous_load, args=(base + "/", load, done, 4))
        loader.start()
        try:
            assert wait_until(lambda: load.ok >= 150, 30), load.ok
            if hup:
                server.signal(signal.SIGHUP)
                assert wait_until(lambda: "Hang up" in server.output(), 10)
            assert wait_until(lambda: load.ok >= 350, 30), load.ok
        finally:
            done.set()
            loader.join(45)
        assert not loader.is_alive(), "a client was still waiting for its answer"
        out = stop(server)
        stats = worker_stats(stats_dir)
    assert_balanced(stats)
    recycled = out.count("Autorestarting worker")
    assert recycled >= 4, out[-3000:]
    # Every worker that ever ran wrote its stats: recycled, reloaded and final ones.
    assert len(stats) == out.count("Booting worker with pid")
    accepted = total(stats, "accepted")
    assert accepted == load.ok, f"{load.errors} errors: {load.kinds}"
    assert total(stats, "completed") == accepted
    assert sink.received == accepted
    assert sink.duplicates() == 0


@pytest.mark.parametrize("worker_class", ["sync", "gevent"])
def test_sigint_quick_path_drains_what_fits_and_reports_the_rest(
    tmp_path: Path, worker_class: str
) -> None:
    fast_n, slow_n = 10, 6
    with (
        Sink(delay=0.05) as fast,
        Sink(delay=3) as slow,
        gunicorn(
            tmp_path, fast, worker_class=worker_class, env={"NOTIFY_SLOW_SINK_URL": slow.url}
        ) as (
            server,
            base,
            stats_dir,
        ),
    ):
        fire(base + "/?slow", slow_n)
        fire(base + "/", fast_n)
        started = time.monotonic()
        out = stop(server, signal.SIGINT, timeout=20)
        stop_seconds = time.monotonic() - started
        stats = worker_stats(stats_dir)
        # The slow ones had reached the sink (running, not pending) when they were cancelled.
        assert wait_until(lambda: slow.requests == slow_n, 5)
    assert_balanced(stats)
    assert total(stats, "accepted") == fast_n + slow_n
    # The fast ones fit into the quick deadline; the slow ones were cancelled and are named.
    assert fast.received == total(stats, "completed") == fast_n
    assert total(stats, "cancelled") == slow_n
    assert out.count("asyncbridge: SIGINT/SIGQUIT in worker") == 2
    assert out.count("cancelled at the deadline: post_json") >= 1
    assert stop_seconds < 10, out[-3000:]


@pytest.mark.parametrize("how", ["failing", "refusing"])
def test_a_failing_or_refusing_sink_leaves_requests_alone_and_counts_failures(
    tmp_path: Path, how: str
) -> None:
    n = 30
    with Sink(status=500) as sink, gunicorn(tmp_path, sink) as (server, base, stats_dir):
        if how == "refusing":
            sink.status = 200
            sink.refuse()
        load = fire(base + "/", n)
        out = stop(server)
        stats = worker_stats(stats_dir)
    assert load.ok == n and load.errors == 0
    assert statistics.median(load.latencies) < 0.05
    assert_balanced(stats)
    assert total(stats, "accepted") == total(stats, "failed") == n
    assert sink.received == 0
    # The logs summarise instead of flooding: each worker (2) logs its first failure of a kind
    # in full, with the traceback, and the rest in summary lines that count them by type.
    expected = "ClientResponseError(500)" if how == "failing" else "ClientConnectorError"
    full = out.count("asyncbridge task post_json failed (more like it are summarised")
    summaries = re.findall(r"post_json failed ([\d,]+) times in the last [^:]+: (.*)", out)
    assert 1 <= full <= 2, out[-3000:]
    assert full + sum(int(count.replace(",", "")) for count, _ in summaries) >= n, out[-3000:]
    assert all(expected.split("(")[0] in kinds for _, kinds in summaries), summaries
    assert out.count("post_json failed") <= 8, out[-3000:]  # a handful of lines, not one per job


def test_the_example_config_serves_and_drains(tmp_path: Path) -> None:
    n = 40
    port = free_port()
    conf = Path(__file__).resolve().parents[2] / "gunicorn.conf.example.py"
    argv = [PYTHON, "-m", "gunicorn", "-c", str(conf), "--no-control-socket", APP]
    env = {"NOTIFY_SINK_URL": "", "BIND": f"127.0.0.1:{port}"}
    with Sink(delay=0.05) as sink:
        env["NOTIFY_SINK_URL"] = sink.url
        with running(argv, log=tmp_path / "gunicorn.log", env=env) as server:
            base = f"http://127.0.0.1:{port}"
            wait_http(base + "/stats", 30, server.proc)
            load = fire(base + "/", n)
            out = stop(server)
    assert load.ok == n
    assert sink.received == n
    reports = [line for line in out.splitlines() if "asyncbridge shutdown of pid" in line]
    assert len(reports) == 2, out[-3000:]
    assert all("[INFO]" in line and "(deadline 10s)" in line for line in reports), reports
    handed = [line for line in out.splitlines() if "coroutines to asyncbridge" in line]
    assert len(handed) == 2
    assert sum(int(line.split(" handed ")[1].split()[0]) for line in handed) == n


def test_worker_timeout_aborts_and_the_report_names_what_was_cancelled(tmp_path: Path) -> None:
    with (
        Sink(delay=3) as slow,
        gunicorn(tmp_path, slow, workers=1, extra="timeout = 2") as (server, base, stats_dir),
    ):
        # The request blocks its sync worker; the master aborts it after `timeout` (SIGABRT).
        with contextlib.suppress(OSError):  # answered 500, or the connection closes
            http_get(base + "/?slow&block", timeout=20)
        assert wait_until(lambda: "asyncbridge shutdown of pid" in server.output(), 15)
        out = stop(server)
        stats = worker_stats(stats_dir)
    assert "WORKER TIMEOUT" in out
    assert out.count("asyncbridge: SIGABRT (worker timeout) in worker") == 1
    assert "0 pending and 1 running; draining for at most 0s" in out
    # Logged once, by the adapter on gunicorn's logger (the core's own log line is turned off).
    reports = [line for line in out.splitlines() if "asyncbridge shutdown of pid" in line]
    assert len(reports) == 1, out[-3000:]
    report = reports[0]
    assert "[WARNING]" in report and "(deadline 0s)" in report
    assert "accepted=1 completed=0 failed=0 timed_out=0 cancelled=1" in report
    assert "cancelled at the deadline: post_json" in report
    # The aborted worker wrote its stats before SIGKILL; its replacement accepted nothing.
    assert [s["cancelled"] for s in stats if s["accepted"]] == [1]


def test_ctrl_c_to_the_whole_group_during_a_graceful_drain_does_not_cut_it_short(
    tmp_path: Path,
) -> None:
    n = 10
    with Sink(delay=1.5) as sink, gunicorn(tmp_path, sink) as (server, base, stats_dir):
        fire(base + "/", n)
        server.signal(signal.SIGTERM)  # graceful: each worker drains in worker_exit
        assert wait_until(lambda: server.output().count("Worker exiting") == 2, 10)
        os.killpg(server.pid, signal.SIGINT)  # Ctrl-C in the terminal: master and workers
        assert server.wait(30) == 0
        out = server.output()
        stats = worker_stats(stats_dir)
    assert_balanced(stats)
    assert total(stats, "accepted") == total(stats, "completed") == sink.received == n
    assert out.count("asyncbridge shutdown of pid") == 2, out[-3000:]
    assert "cancelled at the deadline" not in out
