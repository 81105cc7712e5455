"""asyncbridge.prometheus: the fixed metric names, summed over every worker of a directory."""

from __future__ import annotations

import asyncio
import os
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

import asyncbridge.prometheus
from asyncbridge import Bridge, _publish
from asyncbridge._publish import Publisher, Timing

from .helpers import FORK_WARNING, fresh_bridge
from .status_dirs import counts, env_with_status_dir, run_python, workers_directory

# The fixtures fork this (threaded) process; Python 3.12+ warns about exactly that.
pytestmark = pytest.mark.filterwarnings(FORK_WARNING)

COUNTERS = [
    "asyncbridge_jobs_accepted_total",
    "asyncbridge_jobs_completed_total",
    "asyncbridge_jobs_failed_total",
    "asyncbridge_jobs_timed_out_total",
    "asyncbridge_jobs_cancelled_total",
    "asyncbridge_jobs_retries_total",
    "asyncbridge_loop_stalls_total",
    "asyncbridge_jobs_lost_total",
]
GAUGES = ["asyncbridge_jobs_pending", "asyncbridge_jobs_running"]
HISTOGRAMS = ["asyncbridge_job_wait_seconds", "asyncbridge_job_duration_seconds"]
DEFAULT = {"lane": "default"}


@pytest.fixture
def directory(tmp_path: Path) -> Iterator[Path]:
    """A live worker (this process), a killed one counted by the master, one killed uncounted."""
    timing = Timing()
    timing.wait.add(0.003, 4)
    timing.wait.add(0.2, 1)
    timing.duration.add(0.07, 3)
    live = counts(
        accepted=12, completed=7, failed=1, pending=1, running=3, dropped_full=2, dropped_closed=1
    )
    with workers_directory(tmp_path, live, timing, stalls=2, histograms=True) as directory:
        yield directory


def _registry(directory: Path | None = None, bridge: Bridge | None = None) -> CollectorRegistry:
    reg = CollectorRegistry()
    collector = asyncbridge.prometheus.AsyncBridgeCollector(
        None if directory is None else str(directory), bridge
    )
    reg.register(collector)
    return reg


def test_every_metric_has_its_fixed_name_and_the_lane_label(directory: Path) -> None:
    reg = _registry(directory)
    for name in COUNTERS + GAUGES:
        assert reg.get_sample_value(name, DEFAULT) is not None, name
    for name in HISTOGRAMS:
        assert reg.get_sample_value(f"{name}_count", DEFAULT) is not None, name
    assert reg.get_sample_value("asyncbridge_jobs_dropped_total", {**DEFAULT, "reason": "full"})


def test_counters_sum_every_worker_gauges_only_the_live_ones(directory: Path) -> None:
    reg = _registry(directory)

    def value(name: str, **labels: str) -> float | None:
        return reg.get_sample_value(name, {**DEFAULT, **labels})

    assert value("asyncbridge_jobs_accepted_total") == 12 + 5 + 7
    assert value("asyncbridge_jobs_completed_total") == 7 + 1 + 1
    assert value("asyncbridge_jobs_failed_total") == 1
    assert value("asyncbridge_jobs_dropped_total", reason="full") == 2
    assert value("asyncbridge_jobs_dropped_total", reason="closed") == 1
    # Lost: the counted worker's 4, and the 6 of the one nobody has counted yet.
    assert value("asyncbridge_jobs_lost_total") == 10
    assert value("asyncbridge_loop_stalls_total") == 2
    assert value("asyncbridge_jobs_pending") == 1
    assert value("asyncbridge_jobs_running") == 3
    assert value("asyncbridge_job_wait_seconds_count") == 5
    assert value("asyncbridge_job_wait_seconds_bucket", le="0.0025") == 0
    assert value("asyncbridge_job_wait_seconds_bucket", le="0.005") == 4
    assert value("asyncbridge_job_wait_seconds_bucket", le="0.25") == 5
    assert value("asyncbridge_job_wait_seconds_bucket", le="+Inf") == 5
    assert value("asyncbridge_job_wait_seconds_sum") == pytest.approx(4 * 0.003 + 0.2)
    assert value("asyncbridge_job_duration_seconds_count") == 3
    assert value("asyncbridge_job_duration_seconds_bucket", le="0.1") == 3


def test_without_a_directory_it_reports_this_process_and_agrees_with_stats(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("ASYNCBRIDGE_STATUS_DIR", raising=False)
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)

    async def ok() -> None:
        await asyncio.sleep(0.01)

    async def broken() -> None:
        raise ValueError("no")

    _publish.want_timing()
    with fresh_bridge(max_pending=3, max_concurrency=1) as bridge:
        reg = _registry(bridge=bridge)
        for coro in (ok(), ok(), broken(), ok()):
            bridge.run_soon(coro)  # the fourth finds the backlog full: dropped
        assert bridge.drain(timeout=10)
        stats = bridge.stats()
        assert (
            reg.get_sample_value("asyncbridge_jobs_accepted_total", DEFAULT) == stats.accepted == 3
        )
        assert reg.get_sample_value("asyncbridge_jobs_completed_total", DEFAULT) == stats.completed
        assert reg.get_sample_value("asyncbridge_jobs_failed_total", DEFAULT) == stats.failed == 1
        assert (
            reg.get_sample_value("asyncbridge_jobs_dropped_total", {**DEFAULT, "reason": "full"})
            == stats.dropped["full"]
            == 1
        )
        assert reg.get_sample_value("asyncbridge_job_duration_seconds_count", DEFAULT) == 3
        assert reg.get_sample_value("asyncbridge_job_wait_seconds_count", DEFAULT) == 3
        assert reg.get_sample_value("asyncbridge_jobs_lost_total", DEFAULT) == 0


def test_install_registers_once_per_registry_and_render_gives_the_text_format(
    directory: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    monkeypatch.setenv("ASYNCBRIDGE_STATUS_DIR", str(directory))
    reg = CollectorRegistry()
    first = asyncbridge.prometheus.install(reg)
    assert asyncbridge.prometheus.install(reg) is first
    body, content_type = asyncbridge.prometheus.render(reg)
    assert content_type.startswith("text/plain; version=")
    assert b'asyncbridge_jobs_accepted_total{lane="default"} 24.0' in body
    assert body.count(b"# TYPE asyncbridge_jobs_accepted_total counter") == 1
    seen: list[str] = []
    app = asyncbridge.prometheus.make_wsgi_app(reg)
    served = b"".join(
        app(
            {"REQUEST_METHOD": "GET", "PATH_INFO": "/metrics", "QUERY_STRING": ""},
            lambda status, headers: seen.append(status),
        )
    )
    assert seen == ["200 OK"] and b'asyncbridge_jobs_lost_total{lane="default"} 10.0' in served


# prometheus_client picks multiprocess mode when it is imported, from the environment: these run
# in a fresh interpreter with PROMETHEUS_MULTIPROC_DIR set, as a gunicorn master and its worker.
_MULTIPROCESS = """
import os, sys, time
from prometheus_client import Gauge, Counter, generate_latest
import asyncbridge, asyncbridge.prometheus
from asyncbridge import _publish

asyncbridge.prometheus.install()  # as in gunicorn.conf.py: in the master, before the fork
pid = os.fork()
if pid == 0:  # a worker: its own metric (a live gauge) and a bridge holding 3 jobs
    Gauge("app_inflight", "x", multiprocess_mode="livesum").set(5)
    Counter("app_requests", "x").inc(7)
    import asyncio
    async def hang():
        await asyncio.sleep(3600)
    for _ in range(3):
        asyncbridge.run_soon(hang())
    while asyncbridge.stats().running < 3:
        time.sleep(0.01)
    time.sleep(0.2)
    os.kill(os.getpid(), 9)
os.waitpid(pid, 0)
d = os.environ["PROMETHEUS_MULTIPROC_DIR"]
before = sorted(os.listdir(d))
_publish.worker_gone(pid, d)  # what asyncbridge.gunicorn.child_exit does
after = sorted(os.listdir(d))
print("livesum gone:", any("livesum" in n for n in before), not any("livesum" in n for n in after))
text = generate_latest(asyncbridge.prometheus.registry()).decode()
for line in text.splitlines():
    if line.startswith(("asyncbridge_jobs_lost_total", "asyncbridge_jobs_accepted_total",
                        "app_requests_total", "app_inflight", "asyncbridge_jobs_running")):
        print(line)
"""


def test_multiprocess_mode_marks_a_gone_worker_dead_and_counts_its_losses(tmp_path: Path) -> None:
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    env.pop("ASYNCBRIDGE_STATUS_DIR", None)
    done = run_python(["-c", textwrap.dedent(_MULTIPROCESS)], env=env)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "livesum gone: True True"
    assert 'asyncbridge_jobs_lost_total{lane="default"} 3.0' in lines
    assert 'asyncbridge_jobs_accepted_total{lane="default"} 3.0' in lines
    assert 'asyncbridge_jobs_running{lane="default"} 0.0' in lines  # the worker is gone
    assert "app_requests_total 7.0" in lines  # the app's own metrics, through multiprocess mode
    assert not any(line.startswith("app_inflight") and "5.0" in line for line in lines)
    assert "ended without draining: at least 3 accepted jobs unfinished (lost)" in done.stderr


_DJANGO_VIEW = """
import os, sys
import django
from django.conf import settings
settings.configure(ALLOWED_HOSTS=["testserver"], ROOT_URLCONF=__name__, DEBUG=False)
django.setup()
from django.test import RequestFactory
sys.path.insert(0, "examples/operators")
from django_metrics import metrics
response = metrics(RequestFactory().get("/metrics"))
print(response.status_code, response["Content-Type"])
print(response.content.decode())
"""


def test_the_django_example_view_serves_the_directory(directory: Path) -> None:
    pytest.importorskip("django", reason="Django is in the e2e dependency group")
    done = run_python(["-c", _DJANGO_VIEW], env=env_with_status_dir(directory))
    assert done.returncode == 0, done.stderr
    status_line, _, body = done.stdout.partition("\n")
    assert status_line.startswith("200 text/plain; version=")
    assert 'asyncbridge_jobs_accepted_total{lane="default"} 24.0' in body


def test_every_lane_has_its_own_series(tmp_path: Path) -> None:
    pub = Publisher(str(tmp_path))
    pub.write(
        [
            ("default", counts(accepted=5, completed=5), None),
            ("push", counts(accepted=7, completed=4, running=2, failed=1, retries=3), None),
        ]
    )
    reg = _registry(tmp_path)
    push = {"lane": "push"}
    assert reg.get_sample_value("asyncbridge_jobs_accepted_total", DEFAULT) == 5
    assert reg.get_sample_value("asyncbridge_jobs_accepted_total", push) == 7
    assert reg.get_sample_value("asyncbridge_jobs_failed_total", push) == 1
    assert reg.get_sample_value("asyncbridge_jobs_retries_total", push) == 3
    assert reg.get_sample_value("asyncbridge_jobs_running", push) == 2
    assert reg.get_sample_value("asyncbridge_jobs_running", DEFAULT) == 0
    pub.close()
