"""The shop's tasks. Views enqueue them; AsyncBridgeBackend runs them in the same worker.

``from django.tasks import task`` on Django 6; the fallback is for Django 5.2 with the
``django-tasks`` backport, which has the same API.
"""

from __future__ import annotations

import json
import urllib.request

from django.conf import settings

from asyncbridge.aiohttp import post_json

try:
    from django.tasks import task
except ImportError:  # Django 5.2 and the django-tasks backport
    from django_tasks import task


@task
async def notify_order_placed(order_id: str) -> None:
    """An async task: runs on the worker's bridge loop, with its pooled aiohttp session."""
    await post_json(settings.NOTIFY_URL, {"id": order_id, "event": "order-placed"})


@task
def record_audit(order_id: str) -> int:
    """A plain task with blocking I/O: runs in one of the bridge's threads."""
    body = json.dumps({"id": f"audit-{order_id}", "event": "audit"}).encode()
    request = urllib.request.Request(
        settings.AUDIT_URL, data=body, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return int(response.status)
