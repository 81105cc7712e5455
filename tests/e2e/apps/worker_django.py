"""Settings of the control app for tests/e2e/test_django_tasks.py, and its naive backend.

The control serves examples/django_tasks' view and tasks (``tests.e2e.apps.worker_django_app``)
from :class:`NaiveThreadBackend`: what an in-process backend looks like without asyncbridge. It
runs ``async def`` tasks on a loop in a daemon thread of its own and each plain task in a daemon
thread, and never waits for them: whatever runs when the worker exits is lost. Its async task
uses an aiohttp session of its own, since asyncbridge's session belongs to the bridge loop.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import threading
from typing import Any

from django.utils import timezone  # type: ignore[import-untyped]
from django.utils.crypto import get_random_string  # type: ignore[import-untyped]

try:
    from django.tasks import TaskResult, TaskResultStatus  # type: ignore[import-untyped]
    from django.tasks.backends.base import BaseTaskBackend  # type: ignore[import-untyped]
except ImportError:  # Django 5.2 and the django-tasks backport
    from django_tasks import TaskResult, TaskResultStatus
    from django_tasks.backends.base import BaseTaskBackend

SECRET_KEY = "control-app-only"
ALLOWED_HOSTS = ["127.0.0.1"]
INSTALLED_APPS: list[str] = []
ROOT_URLCONF = "tests.e2e.apps.worker_django_app"
DATABASES: dict[str, dict[str, str]] = {}
USE_TZ = True
TASKS = {"default": {"BACKEND": "tests.e2e.apps.worker_django.NaiveThreadBackend"}}
NOTIFY_URL = os.environ.get("NOTIFY_URL", "")
AUDIT_URL = os.environ.get("AUDIT_URL", NOTIFY_URL)

_loop: asyncio.AbstractEventLoop | None = None
_lock = threading.Lock()


def _background_loop() -> asyncio.AbstractEventLoop:
    global _loop
    with _lock:
        if _loop is None:
            _loop = asyncio.new_event_loop()
            threading.Thread(target=_loop.run_forever, daemon=True).start()
        return _loop


class NaiveThreadBackend(BaseTaskBackend):  # type: ignore[misc]
    """Fire and forget on background threads, with nothing that waits for them at exit."""

    supports_async_task = True

    def enqueue(self, task: Any, args: Any, kwargs: Any) -> Any:
        self.validate_task(task)
        result = TaskResult(
            task=task,
            id=get_random_string(32),
            status=TaskResultStatus.READY,
            enqueued_at=timezone.now(),
            started_at=None,
            last_attempted_at=None,
            finished_at=None,
            args=args,
            kwargs=kwargs,
            backend=self.alias,
            errors=[],
            worker_ids=[],
        )
        if inspect.iscoroutinefunction(task.func):
            asyncio.run_coroutine_threadsafe(task.func(*args, **kwargs), _background_loop())
        else:
            threading.Thread(target=task.func, args=args, kwargs=kwargs, daemon=True).start()
        return result
