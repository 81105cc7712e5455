"""URLs, view and tasks of the control app (see :mod:`tests.e2e.apps.worker_django`).

The same view and tasks as examples/django_tasks, except that the async task posts with an
aiohttp session of its own (the naive backend's loop is not a bridge loop).
"""

from __future__ import annotations

import json
import urllib.request

import aiohttp
from django.conf import settings  # type: ignore[import-untyped]
from django.http import HttpRequest, JsonResponse  # type: ignore[import-untyped]
from django.urls import path  # type: ignore[import-untyped]
from django.views.decorators.csrf import csrf_exempt  # type: ignore[import-untyped]

try:
    from django.tasks import task  # type: ignore[import-untyped]
except ImportError:  # Django 5.2 and the django-tasks backport
    from django_tasks import task


@task  # type: ignore[untyped-decorator]
async def notify_order_placed(order_id: str) -> None:
    """POST the order event with a session of its own."""
    async with aiohttp.ClientSession() as session:
        payload = {"id": order_id, "event": "order-placed"}
        async with session.post(settings.NOTIFY_URL, json=payload) as response:
            response.raise_for_status()


@task  # type: ignore[untyped-decorator]
def record_audit(order_id: str) -> int:
    """POST the audit record with urllib (blocking)."""
    body = json.dumps({"id": f"audit-{order_id}", "event": "audit"}).encode()
    request = urllib.request.Request(
        settings.AUDIT_URL, data=body, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return int(response.status)


@csrf_exempt  # type: ignore[untyped-decorator]
def place_order(request: HttpRequest) -> JsonResponse:
    """Enqueue both tasks and answer at once."""
    if request.method != "POST":
        return JsonResponse({"error": "POST only"}, status=405)
    order_id = str(json.loads(request.body)["id"])
    notify_order_placed.enqueue(order_id)
    record_audit.enqueue(order_id)
    return JsonResponse({"id": order_id}, status=202)


urlpatterns = [path("orders/", place_order)]
