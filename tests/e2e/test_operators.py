"""What an operator sees, against a real gunicorn on 127.0.0.1: losses counted by the master after
SIGKILL, metrics summed over workers, the stall watchdog, and ``python -m asyncbridge status``.

The app is tests/e2e/apps/operators_app.py; every worker publishes in the status directory.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from asyncbridge._publish import DirectoryView, read_directory

from .procs import PYTHON, ROOT, Server, free_port, http_get, running, wait_http
from .sink import Sink, wait_until

pytestmark = pytest.mark.e2e

APP = "tests.e2e.apps.operators_app:app"
APP_FILE = ROOT / "tests" / "e2e" / "apps" / "operators_app.py"
LOST_LINE = re.compile(
    r"\[WARNING\] asyncbridge: worker (\d+) ended without draining: at least (\d+) accepted jobs "
    r"unfinished \(lost\)"
)

CONF = """\
import asyncbridge.prometheus
from asyncbridge.gunicorn import (
    child_exit, post_fork, post_worker_init, worker_abort, worker_exit, worker_int,
)

asyncbridge.prometheus.install()  # in the master: counts the gone workers, mark_process_dead
bind = "127.0.0.1:{port}"
workers = 2
worker_class = "sync"
graceful_timeout = 20
timeout = 30
loglevel = "info"
control_socket_disable = True
{extra}
"""


@contextlib.contextmanager
def gunicorn(
    tmp_path: Path, env: dict[str, str], extra: str = ""
) -> Iterator[tuple[Server, str, Path]]:
    """gunicorn serving operators_app with 2 workers; yields (server, base url, status dir)."""
    port = free_port()
    status = tmp_path / "status"
    status.mkdir()
    conf = tmp_path / "gunicorn.conf.py"
    conf.write_text(CONF.format(port=port, extra=textwrap.dedent(extra)))
    full_env = {
        "PROMETHEUS_MULTIPROC_DIR": str(status),  # prometheus_client's, and asyncbridge's too
        "ASYNCBRIDGE_DRAIN_TIMEOUT": "1",
        **env,
    }
    argv = [PYTHON, "-m", "gunicorn", "-c", str(conf), APP]
    with running(argv, log=tmp_path / "gunicorn.log", env=full_env) as server:
        base = f"http://127.0.0.1:{port}"
        wait_http(base + "/stats", 30, server.proc)
        wait_until(lambda: len(read_directory(str(status)).live) == 2, 30)
        yield server, base, status


def fire(url: str, n: int, concurrency: int = 4) -> list[str]:
    """``n`` GETs; returns the answers (the notification ids), failing on any non-200."""

    def one(_: int) -> str:
        status, body = http_get(url, timeout=10)
        assert status == 200, (status, body)
        return body.decode()

    with ThreadPoolExecutor(concurrency) as pool:
        return list(pool.map(one, range(n)))


def settled(status: Path, completed_or_failed: int) -> bool:
    """All live workers idle and published, with that many jobs finished over the directory."""
    view = read_directory(str(status))
    lanes = view.lanes()
    total = sum(lane.counts["completed"] + lane.counts["failed"] for lane in lanes.values())
    busy = sum(r.total().unfinished for r in view.live)
    return total == completed_or_failed and busy == 0


def metrics(base: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """The asyncbridge samples at ``base``/metrics."""
    status, body = http_get(base + "/metrics")
    assert status == 200
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(body.decode())
        for s in family.samples
        if s.name.startswith("asyncbridge_")
    }


def lane(**labels: str) -> tuple[tuple[str, str], ...]:
    return tuple(sorted({"lane": "default", **labels}.items()))


def stop(server: Server) -> str:
    server.signal(signal.SIGTERM)
    assert server.wait(40) == 0, server.output()[-4000:]
    return server.output()


def by_worker(ids: list[str] | dict[str, int]) -> dict[int, int]:
    out: dict[int, int] = {}
    for nid in ids:
        pid = int(nid.split("-")[0])
        out[pid] = out.get(pid, 0) + 1
    return out


def test_sigkill_of_a_worker_holding_work_is_counted_by_the_master(tmp_path: Path) -> None:
    with (
        Sink() as ok,
        Sink(delay=3600) as slow,
        gunicorn(tmp_path, {"SINK_URL": ok.url, "SLOW_SINK_URL": slow.url}) as (
            server,
            base,
            status,
        ),
    ):
        fast_ids = fire(base + "/", 40)
        slow_ids = fire(base + "/?to=slow", 12)
        held = by_worker(slow_ids)
        victim = max(held, key=lambda pid: held[pid])  # holds at least 6 hanging jobs
        # Wait until the victim has published everything: the fast ones done, the slow held.
        assert wait_until(lambda: ok.received == 40, 30)

        def published() -> bool:
            recs = [r for r in read_directory(str(status)).live if r.pid == victim]
            c = recs[0].total().counts if recs else {}
            return (
                bool(recs)
                and c["running"] == held[victim]
                and c["pending"] == 0
                and (c["completed"] == by_worker(fast_ids).get(victim, 0))
            )

        assert wait_until(published, 30)
        (record,) = [r for r in read_directory(str(status)).live if r.pid == victim]
        accepted = record.total().counts["accepted"]
        os.kill(victim, signal.SIGKILL)
        assert wait_until(lambda: LOST_LINE.search(server.output()) is not None, 30)
        view = read_directory(str(status))
        out = stop(server)
        received_from_victim = sum(n for nid, n in ok.ids.items() if nid.startswith(f"{victim}-"))
    lines = LOST_LINE.findall(out)
    # One line, from the master, for the killed worker only (the others drained).
    assert lines == [(str(victim), str(held[victim]))]
    master_line = next(line for line in out.splitlines() if LOST_LINE.search(line))
    assert f"[{server.pid}]" in master_line
    # The lost count is exactly what the sink never received from that worker.
    assert accepted - received_from_victim == held[victim] == view.exited.lost
    assert sum(slow.abandoned.values()) + slow.received <= len(slow_ids)
    assert slow.received == 0
    # asyncbridge_jobs_lost_total, as the collector reads it from the directory after the stop.
    final = read_directory(str(status))
    assert final.lanes()["default"].lost == held[victim]
    assert final.exited.undrained == 1


def test_metrics_summed_over_workers_agree_with_the_sink_after_failures_and_a_recycle(
    tmp_path: Path,
) -> None:
    with (
        Sink() as ok,
        Sink(status=500) as failing,
        gunicorn(
            tmp_path,
            {"SINK_URL": ok.url, "FAIL_SINK_URL": failing.url},
            extra="max_requests = 40\nmax_requests_jitter = 0",
        ) as (server, base, status),
    ):
        fire(base + "/", 90)
        fire(base + "/?to=fail", 30)
        fire(base + "/", 30)
        assert wait_until(lambda: settled(status, 150) and ok.received == 120, 30)
        assert wait_until(lambda: read_directory(str(status)).exited.processes >= 1, 30)
        # Histograms are published at most 0.1 s after the counters; scrape until they agree.
        key = ("asyncbridge_job_duration_seconds_count", lane())
        assert wait_until(lambda: metrics(base).get(key) == 150, 30)
        scraped = metrics(base)
        view = read_directory(str(status))
        out = stop(server)
    assert "Autorestarting worker" in out  # max_requests recycled at least one worker
    assert scraped[("asyncbridge_jobs_accepted_total", lane())] == 150
    assert scraped[("asyncbridge_jobs_completed_total", lane())] == ok.received == 120
    assert scraped[("asyncbridge_jobs_failed_total", lane())] == failing.requests == 30
    assert scraped[("asyncbridge_jobs_lost_total", lane())] == 0
    assert scraped[("asyncbridge_jobs_pending", lane())] == 0
    assert scraped[("asyncbridge_jobs_running", lane())] == 0
    assert scraped[("asyncbridge_job_duration_seconds_count", lane())] == 150
    assert scraped[("asyncbridge_job_wait_seconds_count", lane())] == 150
    assert scraped[("asyncbridge_jobs_dropped_total", lane(reason="full"))] == 0
    assert ok.duplicates() == 0
    # The same figures as the directory (live workers, and the recycled ones folded in).
    totals = view.lanes()["default"].counts
    assert (totals["accepted"], totals["completed"], totals["failed"]) == (150, 120, 30)
    # After the stop every worker has drained; the counters outlive them all.
    after = read_directory(str(status))
    assert after.live == [] and after.lanes()["default"].counts["accepted"] == 150
    assert LOST_LINE.search(out) is None


def test_the_watchdog_names_a_time_sleep_coroutine_and_is_silent_under_load(
    tmp_path: Path,
) -> None:
    line_no = next(
        i
        for i, line in enumerate(APP_FILE.read_text().splitlines(), 1)
        if "# blocks the loop" in line
    )
    with (
        Sink(delay=0.02) as ok,
        gunicorn(tmp_path, {"SINK_URL": ok.url, "ASYNCBRIDGE_STALL_WARNING": "0.5"}) as (
            server,
            base,
            status,
        ),
    ):
        fire(base + "/", 300, concurrency=8)
        assert wait_until(lambda: ok.received == 300, 30)
        time.sleep(1.0)  # two thresholds of a quiet loop
        healthy = server.output()
        blocker = http_get(base + "/block?seconds=2")
        assert blocker == (200, b"blocking")
        assert wait_until(lambda: "turned again after a stall" in server.output(), 30)
        stalled = [r for r in read_directory(str(status)).live if r.stalls]
        out = stop(server)
    assert "has had no turn" not in healthy and "stall" not in healthy
    start = re.search(
        r"the loop of pid (\d+) has had no turn for [\d.]+s: coroutine blocking_job at "
        rf"{re.escape(str(APP_FILE))}:{line_no} in blocking_job is blocking it",
        out,
    )
    assert start is not None, out[-3000:]
    end = re.search(r"the loop of pid (\d+) turned again after a stall of ([\d.]+)s", out)
    assert end is not None and end.group(1) == start.group(1)
    assert 1.4 <= float(end.group(2)) <= 2.0 + 2.0, end.group(2)
    assert [(r.pid, r.stalls) for r in stalled] == [(int(start.group(1)), 1)]
    assert 1.4 <= stalled[0].longest_stall <= 2.0 + 2.0
    assert out.count("has had no turn") == 1 and out.count("turned again after a stall") == 1


def test_status_command_shows_each_live_worker_and_totals(tmp_path: Path) -> None:
    with (
        Sink() as ok,
        Sink(delay=3600) as slow,
        gunicorn(tmp_path, {"SINK_URL": ok.url, "SLOW_SINK_URL": slow.url}) as (
            server,
            base,
            status,
        ),
    ):
        fire(base + "/", 50)
        fire(base + "/?to=slow", 3)
        assert wait_until(lambda: ok.received == 50, 30)

        def shows_all() -> bool:
            view = read_directory(str(status))
            return sum(r.total().counts["running"] for r in view.live) == 3 and settled_ok(view)

        def settled_ok(view: DirectoryView) -> bool:
            return sum(r.total().counts["completed"] for r in view.live) == 50

        assert wait_until(shows_all, 30)
        workers = sorted(r.pid for r in read_directory(str(status)).live)
        done = subprocess.run(
            [sys.executable, "-m", "asyncbridge", "status", "--dir", str(status)],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=ROOT,
            check=False,
        )
        stop(server)
    assert done.returncode == 0, done.stderr
    rows = {
        line.split()[0]: line.split()[1:] for line in done.stdout.splitlines()[2:] if line.split()
    }
    assert sorted(int(pid) for pid in rows if pid.isdigit()) == workers
    for pid in workers:
        assert rows[str(pid)][0] == "running"
    # accepted, pending, running, completed, failed, dropped, stalls, lost
    assert rows["TOTAL"] == ["53", "0", "3", "50", "0", "0", "0", "0"]
    assert "2 live, 0 gone and not yet counted, 0 exited and counted" in done.stdout
    per_worker = sum(int(rows[str(pid)][2]) for pid in workers)
    assert per_worker == 53


def test_the_example_config_serves_every_workers_metrics_from_a_view_and_a_port(
    tmp_path: Path,
) -> None:
    example = ROOT / "examples" / "operators"
    port, metrics_port = free_port(), free_port()
    status = tmp_path / "metrics"
    with Sink() as push:
        env = {
            "PROMETHEUS_MULTIPROC_DIR": str(status),
            "METRICS_PORT": str(metrics_port),
            "BIND": f"127.0.0.1:{port}",
            "PUSH_URL": push.url,
            "PYTHONPATH": str(example),
        }
        argv = [PYTHON, "-m", "gunicorn", "app:app"]  # ./gunicorn.conf.py, read without -c
        with running(argv, log=tmp_path / "gunicorn.log", env=env, cwd=example) as server:
            base = f"http://127.0.0.1:{port}"
            wait_http(f"http://127.0.0.1:{metrics_port}/", 30, server.proc)

            def signup(i: int) -> None:
                req = urllib.request.Request(f"{base}/signup/u{i}", method="POST")
                with urllib.request.urlopen(req, timeout=10) as resp:
                    assert resp.read() == b"welcome\n"

            with ThreadPoolExecutor(4) as pool:
                list(pool.map(signup, range(40)))
            assert wait_until(lambda: push.received == 40, 30)
            key = ("asyncbridge_jobs_completed_total", lane())
            assert wait_until(lambda: metrics(base).get(key) == 40, 30)
            from_view = metrics(base)
            from_port = metrics(f"http://127.0.0.1:{metrics_port}")
            out = stop(server)
    for scraped in (from_view, from_port):
        assert scraped[("asyncbridge_jobs_accepted_total", lane())] == 40
        assert scraped[("asyncbridge_jobs_completed_total", lane())] == push.received == 40
        assert scraped[("asyncbridge_jobs_lost_total", lane())] == 0
    assert out.count("asyncbridge shutdown of pid") == 2


def test_under_uwsgi_the_worker_that_replaces_a_killed_one_counts_it(tmp_path: Path) -> None:
    uwsgi = Path(sys.executable).with_name("uwsgi")
    if not uwsgi.exists():
        pytest.skip(f"uWSGI (the pyuwsgi wheel) is not installed next to {sys.executable}")
    port = free_port()
    status = tmp_path / "status"
    argv = [
        str(uwsgi),
        "--ini",
        f"{ROOT / 'examples' / 'uwsgi.ini'}:asyncbridge",
        "--http-socket",
        f"127.0.0.1:{port}",
        "--wsgi-file",
        str(ROOT / "tests" / "e2e" / "apps" / "uwsgi_app.py"),
        "--processes",
        "2",
        "--worker-reload-mercy",
        "5",
    ]
    with Sink(delay=3600) as slow:
        env = {
            "SINK_URL": slow.url,
            "OUT_DIR": str(tmp_path),
            "ASYNCBRIDGE_STATUS_DIR": str(status),
            "ASYNCBRIDGE_DRAIN_TIMEOUT": "1",
        }
        with running(argv, log=tmp_path / "uwsgi.log", env=env) as server:
            base = f"http://127.0.0.1:{port}"
            wait_http(base + "/stats", 30, server.proc)
            assert wait_until(lambda: len(read_directory(str(status)).live) == 2, 30)
            for _ in range(10):
                assert http_get(base + "/notify")[0] == 200

            def holding() -> dict[int, int]:
                return {
                    r.pid: r.total().counts["running"] for r in read_directory(str(status)).live
                }

            assert wait_until(lambda: sum(holding().values()) == 10, 30)
            held = holding()
            victim = max(held, key=lambda pid: held[pid])
            os.kill(victim, signal.SIGKILL)
            line = (
                f"asyncbridge: worker {victim} ended without draining: at least {held[victim]} "
                "accepted jobs unfinished (lost)"
            )
            assert wait_until(lambda: line in server.output(), 30), server.output()[-3000:]
            view = read_directory(str(status))
            out = server.output()
    assert out.count("ended without draining") == 1
    assert re.search(r"respawned uWSGI worker|spawned uWSGI worker", out)
    assert view.exited.lost == held[victim] and view.exited.undrained == 1
    assert victim not in {r.pid for r in view.live} and len(view.live) == 2
    assert slow.received == 0
