"""examples/django: the view's notification reaches a real aiohttp sink on 127.0.0.1.

Once with Django's test client in a fresh interpreter (Django's settings are process-global, so
they stay out of the test process), once served by real gunicorn workers with the example's
gunicorn.conf.py, stopped with SIGTERM while notifications are still in flight.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from .orders import post_order
from .procs import PYTHON, ROOT, free_port, http_get, running, wait_http
from .sink import Sink

pytestmark = pytest.mark.e2e

EXAMPLE = ROOT / "examples" / "django"

CLIENT_SCRIPT = """
import json, os, sys

sys.path.insert(0, {example!r})
os.environ["DJANGO_SETTINGS_MODULE"] = "djangoexample.settings"

import django

django.setup()

from django.test import Client

import asyncbridge

client = Client()
for i in range({n}):
    response = client.post(
        "/orders/", data=json.dumps({{"id": f"o{{i}}"}}), content_type="application/json"
    )
    assert response.status_code == 202, response.status_code
    assert response.json() == {{"id": f"o{{i}}", "notification_queued": True}}, response.json()
assert client.get("/orders/").status_code == 405
report = asyncbridge.shutdown(10)
s = report.stats
print(json.dumps({{"clean": report.clean, "accepted": s.accepted, "completed": s.completed}}))
"""


@pytest.fixture
def sink() -> Iterator[Sink]:
    with Sink() as s:
        yield s


def test_django_view_notification_reaches_the_sink(sink: Sink) -> None:
    n = 25
    result = subprocess.run(
        [sys.executable, "-W", "error", "-c", CLIENT_SCRIPT.format(example=str(EXAMPLE), n=n)],
        cwd=ROOT,
        env={**os.environ, "NOTIFY_URL": sink.url},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1]) == {
        "clean": True,
        "accepted": n,
        "completed": n,
    }
    assert dict(sink.ids) == {f"o{i}": 1 for i in range(n)}


def test_django_under_gunicorn_drains_notifications_at_sigterm(sink: Sink, tmp_path: Path) -> None:
    n = 20
    sink.delay = 0.5  # still in flight when the workers are told to stop
    port = free_port()
    argv = [
        PYTHON,
        "-m",
        "gunicorn",
        "-c",
        str(EXAMPLE / "gunicorn.conf.py"),
        "--chdir",
        str(EXAMPLE),
        "--bind",
        f"127.0.0.1:{port}",
    ]
    with running(
        argv, log=tmp_path / "gunicorn.log", env={"NOTIFY_URL": sink.url}, cwd=EXAMPLE
    ) as server:
        base = f"http://127.0.0.1:{port}"
        wait_http(base + "/orders/", 30, server.proc)
        assert http_get(base + "/orders/")[0] == 405
        for i in range(n):
            assert post_order(base, f"g{i}") == {"id": f"g{i}", "notification_queued": True}
        assert sink.received < n  # the requests did not wait for the notifications
        server.signal(signal.SIGTERM)
        assert server.wait(40) == 0, server.output()[-4000:]
        log = server.output()
    assert dict(sink.ids) == {f"g{i}": 1 for i in range(n)}
    reports = re.findall(r"asyncbridge shutdown of pid \d+ .*? completed=(\d+) failed=(\d+)", log)
    assert len(reports) == 2, textwrap.shorten(log, 4000)
    assert sum(int(completed) for completed, _ in reports) == n
    assert sum(int(failed) for _, failed in reports) == 0
