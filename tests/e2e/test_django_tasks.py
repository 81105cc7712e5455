"""examples/django_tasks under real gunicorn and runserver: every enqueued task runs exactly once.

Each ``POST /orders/`` enqueues two Django tasks on AsyncBridgeBackend: an ``async def`` that
posts with asyncbridge's aiohttp session, and a plain ``def`` that posts with urllib from one of
the bridge's threads. The sink answers after 3 s, longer than a gunicorn worker takes to exit
even under load, and counts a post only if its sender is still connected then; so the last tasks
are still running when gunicorn is told to stop (SIGTERM), and the workers' drain must finish
them. The control serves the same view and tasks from a minimal in-process backend as one might
write it (a daemon loop thread, a thread per plain task, no drain). The same test runs on Django
5.2 with the django-tasks backport and on Django 6.
"""

from __future__ import annotations

import contextlib
import json
import re
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from .orders import post_order
from .procs import PYTHON, ROOT, Server, free_port, http_get, running, wait_http
from .sink import Sink, wait_until

pytestmark = pytest.mark.e2e

EXAMPLE = ROOT / "examples" / "django_tasks"
SINK_DELAY = 3.0
REPORT = re.compile(
    r"asyncbridge shutdown of pid (?P<pid>\d+) .*?accepted=(?P<accepted>\d+) "
    r"completed=(?P<completed>\d+) failed=(?P<failed>\d+) timed_out=(?P<timed_out>\d+) "
    r"cancelled=(?P<cancelled>\d+)"
)


@pytest.fixture
def sink() -> Iterator[Sink]:
    with Sink(delay=SINK_DELAY) as s:
        yield s


def _expected(prefix: str, n: int) -> dict[str, int]:
    ids = {f"{prefix}{i}": 1 for i in range(n)}
    return ids | {f"audit-{prefix}{i}": 1 for i in range(n)}


def _settled(sink: Sink) -> bool:
    return sink.requests == sink.received + sum(sink.abandoned.values())


def _gunicorn(
    port: int, tmp_path: Path, sink: Sink, *, app: str | None = None, env: dict[str, str]
) -> contextlib.AbstractContextManager[Server]:
    """The example with its gunicorn.conf.py, or (``app``) a WSGI app with 2 plain workers."""
    # gunicorn 27's control socket has one default path for every master: keep out of it.
    argv = [PYTHON, "-m", "gunicorn", "--bind", f"127.0.0.1:{port}", "--no-control-socket"]
    if app is None:
        argv += ["-c", str(EXAMPLE / "gunicorn.conf.py")]
    else:
        argv += ["--workers", "2", app]
    full_env = {"NOTIFY_URL": sink.url, "AUDIT_URL": sink.url, **env}
    cwd = EXAMPLE if app is None else ROOT
    return running(argv, log=tmp_path / "gunicorn.log", env=full_env, cwd=cwd)


def test_every_task_runs_once_through_gunicorn_sigterm(sink: Sink, tmp_path: Path) -> None:
    # 16 orders: about 8 plain tasks per worker, one round of its 8 threads (THREADS) of 3 s
    # each, well inside the 10 s drain.
    n = 16
    port = free_port()
    with _gunicorn(port, tmp_path, sink, env={}) as server:
        base = f"http://127.0.0.1:{port}"
        wait_http(base + "/tasks/none/", 30, server.proc)
        for i in range(n):
            answer = post_order(base, f"o{i}")
            statuses = {name: status for name, (_, status) in answer["tasks"].items()}
            assert set(statuses) == {"notify", "audit"}
            assert all(s in ("READY", "RUNNING") for s in statuses.values()), answer
        assert sink.received < 2 * n  # the requests did not wait for their tasks
        server.signal(signal.SIGTERM)
        assert server.wait(30) == 0, server.output()[-4000:]
        log = server.output()
    assert wait_until(lambda: _settled(sink), SINK_DELAY + 5)
    assert dict(sink.ids) == _expected("o", n)  # every task ran, exactly once
    assert sum(sink.abandoned.values()) == 0
    reports = [m.groupdict() for m in REPORT.finditer(log)]
    assert len(reports) == 2, log[-4000:]  # one drain per worker
    assert sum(int(r["accepted"]) for r in reports) == 2 * n
    assert sum(int(r["completed"]) for r in reports) == 2 * n
    assert sum(int(r["failed"]) + int(r["cancelled"]) for r in reports) == 0
    print(
        f"\ndjango tasks, gunicorn: tasks={2 * n} accepted={2 * n} received={sink.received} lost=0"
    )


def test_control_a_naive_in_process_backend_loses_them(sink: Sink, tmp_path: Path) -> None:
    n = 10
    port = free_port()
    app = "tests.e2e.apps.worker_django_wsgi:application"
    env = {"DJANGO_SETTINGS_MODULE": "tests.e2e.apps.worker_django"}
    with _gunicorn(port, tmp_path, sink, app=app, env=env) as server:
        base = f"http://127.0.0.1:{port}"
        wait_http(base + "/orders/", 30, server.proc)
        for i in range(n):
            post_order(base, f"c{i}")
        server.signal(signal.SIGTERM)
        assert server.wait(30) == 0, server.output()[-4000:]
    assert wait_until(lambda: _settled(sink), SINK_DELAY + 5)
    lost = 2 * n - sink.received
    assert sink.duplicates() == 0
    assert set(sink.ids) <= set(_expected("c", n))
    assert lost > 0, dict(sink.ids)
    print(f"\ndjango tasks, naive backend: tasks={2 * n} received={sink.received} lost={lost}")


def test_runserver_runs_tasks_and_drains_them_at_ctrl_c(sink: Sink, tmp_path: Path) -> None:
    n = 5
    port = free_port()
    argv = [PYTHON, "manage.py", "runserver", "--noreload", f"127.0.0.1:{port}"]
    env = {"NOTIFY_URL": sink.url, "AUDIT_URL": sink.url}
    with running(argv, log=tmp_path / "runserver.log", env=env, cwd=EXAMPLE) as server:
        base = f"http://127.0.0.1:{port}"
        wait_http(base + "/tasks/none/", 30, server.proc)
        first = post_order(base, "r0")
        # One process: its store knows the result, READY or RUNNING until the sink answers.
        result_id = first["tasks"]["notify"][0]
        assert wait_until(lambda: _task_status(base, result_id) == "SUCCESSFUL", SINK_DELAY + 10)
        for i in range(1, n):
            post_order(base, f"r{i}")
        assert sink.received < 2 * n
        server.signal(signal.SIGINT)  # Ctrl-C: runserver exits, the atexit fallback drains
        assert server.wait(30) == 0, server.output()[-4000:]
        log = server.output()
    assert wait_until(lambda: _settled(sink), SINK_DELAY + 5)
    assert dict(sink.ids) == _expected("r", n)
    match = REPORT.search(log)
    assert match is not None, log[-4000:]
    assert (match["accepted"], match["completed"]) == (str(2 * n), str(2 * n))


def _task_status(base: str, result_id: str) -> str:
    status, body = http_get(f"{base}/tasks/{result_id}/")
    assert status == 200, body
    return str(json.loads(body)["status"])
