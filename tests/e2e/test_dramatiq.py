"""Dramatiq with a real Redis broker: 2 worker processes x 2 threads, then SIGTERM.

Each message hands a ``post_json`` to the bridge and returns at once. The sink answers after
6 s, well past the 2.3-3 s a Dramatiq worker process takes from SIGTERM to its exit (its main
loop sleeps for up to a second, then the consumers stop), so a hand-off that the process does
not drain is still in flight when it dies (the sink counts a post only if its sender is still
connected when the answer goes out).

Two controls run the same broker module without the middleware. Since the core registers its
exit drain with ``multiprocessing``'s finalizers (Dramatiq's worker processes end with
``os._exit`` after running them), a plain SIGTERM loses nothing even then. What the middleware
adds shows when a second SIGTERM reaches a worker while it drains (a process manager that
signals every process of the group, an operator who signals again): Dramatiq's "kill" handler
cuts the finalizer's drain short, while the middleware's drain ignores it.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from . import workers
from .apps.worker_common import Ledger, environment, read_ledger
from .procs import PYTHON, Server
from .redis import RedisServer
from .sink import Sink, wait_until
from .workers import (
    assert_all_received,
    assert_every_task_ran_once,
    assert_reports_account_for,
    sigterm_when,
    tail,
)

pytestmark = pytest.mark.e2e

SINK_DELAY = 6.0
REPORT = workers.report_pattern(r"Dramatiq worker: ")

redis = workers.redis_fixture
sink = workers.sink_fixture(SINK_DELAY)


WORKER_PID = re.compile(r"\[PID (\d+)\] \[MainThread\] \[dramatiq\.WorkerProcess\(\d\)\]")


def _worker_pids(worker: Server) -> set[int]:
    return {int(p) for p in WORKER_PID.findall(worker.output())}


def _drain_began(worker: Server, pid: int, adapter: bool) -> bool:
    log = worker.output()
    if adapter:  # the middleware logs as it starts to drain
        return f"asyncbridge: Dramatiq worker {pid} draining" in log
    # The core's finalizer drains right after the worker has shut down.
    return re.search(rf"\[PID {pid}\] .*Worker has been shut down", log) is not None


def _run(
    n: int,
    redis: RedisServer,
    sink: Sink,
    tmp_path: Path,
    *,
    adapter: bool,
    second_term: bool = False,
) -> tuple[Ledger, list[dict[str, str]]]:
    """Send ``n`` messages, run 2 x 2 workers until all ran, SIGTERM; the ledger and reports.

    With ``second_term``, each worker process gets another SIGTERM half a second into its drain.
    """
    ledger_path = tmp_path / "ledger"
    env = environment(redis_url=redis.url, sink_url=sink.url, ledger=ledger_path, adapter=adapter)
    code = (
        "from tests.e2e.apps.worker_dramatiq import notify\n"
        f"for i in range({n}):\n"
        "    notify.send(f't{i}')\n"
    )
    argv = [PYTHON, "-m", "dramatiq", "tests.e2e.apps.worker_dramatiq", "-p", "2", "-t", "2"]
    log = workers.run_worker(
        ["-c", code],
        argv,
        env=env,
        log=tmp_path / "dramatiq.log",
        stop=lambda w: sigterm_when(
            w,
            lambda: read_ledger(ledger_path).lines >= n,
            40,
            then=_second_sigterms(adapter) if second_term else None,
            exit_codes=(0, 1) if second_term else (0,),
        ),
        sink=sink,
        sink_delay=SINK_DELAY,
    )
    return read_ledger(ledger_path), workers.find_reports(REPORT, log)


def _second_sigterms(adapter: bool) -> Callable[[Server], None]:
    """Another SIGTERM to each worker process, half a second into its drain."""

    def send(worker: Server) -> None:
        assert wait_until(lambda: len(_worker_pids(worker)) == 2, 10), tail(worker)
        pids = _worker_pids(worker)
        for pid in sorted(pids):
            began = wait_until(functools.partial(_drain_began, worker, pid, adapter), 20)
            assert began, tail(worker)
            time.sleep(0.5)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    return send


def test_dramatiq_worker_processes_drain_at_sigterm(
    redis: RedisServer, sink: Sink, tmp_path: Path
) -> None:
    n = 200
    ledger, reports = _run(n, redis, sink, tmp_path, adapter=True)
    # Every message ran exactly once; received == accepted, no duplicates.
    assert_all_received(n, ledger, sink)
    # Both worker processes drained; their reports account for every hand-off.
    assert len(reports) == 2, reports
    assert {int(r["pid"]) for r in reports} >= set(ledger.pids)
    assert_reports_account_for(n, reports)
    print(f"\ndramatiq adapter: messages={n} accepted={n} received={sink.received} lost=0")


def test_control_without_the_middleware_the_core_finalizer_drains_a_plain_sigterm(
    redis: RedisServer, sink: Sink, tmp_path: Path
) -> None:
    n = 20
    ledger, reports = _run(n, redis, sink, tmp_path, adapter=False)
    assert_every_task_ran_once(n, ledger)
    assert reports == []  # the middleware's report is absent: the core's finalizer drained
    assert dict(sink.ids) == {f"t{i}": 1 for i in range(n)}
    print(f"\ndramatiq control, one SIGTERM: messages={n} received={sink.received} lost=0")


@pytest.mark.parametrize("adapter", [True, False], ids=["middleware", "control"])
def test_a_second_sigterm_during_the_drain(
    redis: RedisServer, sink: Sink, tmp_path: Path, adapter: bool
) -> None:
    n = 20
    ledger, reports = _run(n, redis, sink, tmp_path, adapter=adapter, second_term=True)
    assert_every_task_ran_once(n, ledger)
    assert sink.duplicates() == 0
    lost = n - sink.received
    if adapter:
        assert dict(sink.ids) == {f"t{i}": 1 for i in range(n)}  # the drain ignored it
        assert sum(int(r["completed"]) for r in reports) == n
    else:
        # Dramatiq's handler raised SystemExit inside the finalizer's drain: the posts still
        # in flight died with the process.
        assert lost > 0, (sink.received, dict(sink.ids))
    what = "middleware" if adapter else "control"
    print(f"\ndramatiq {what}, second SIGTERM: messages={n} received={sink.received} lost={lost}")


def test_example_proj_delivers_every_notification(
    redis: RedisServer, sink: Sink, tmp_path: Path
) -> None:
    n = 10
    code = (
        f"from proj import order_placed\nfor i in range({n}):\n    order_placed.send(f'e{{i}}')\n"
    )
    argv = [PYTHON, "-m", "dramatiq", "proj", "--processes", "2", "--threads", "2"]
    log = workers.run_example(
        "dramatiq",
        code,
        argv,
        redis=redis,
        sink=sink,
        sink_delay=SINK_DELAY,
        log=tmp_path / "dramatiq.log",
        stop=lambda w: sigterm_when(w, lambda: sink.requests >= n, 40),
    )
    assert dict(sink.ids) == {f"e{i}": 1 for i in range(n)}
    assert len(REPORT.findall(log)) == 2  # the middleware drained both processes
