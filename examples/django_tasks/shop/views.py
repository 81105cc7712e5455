"""The views: enqueue the order's tasks and answer at once; report a task's status."""

from __future__ import annotations

import json

from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_POST

from .tasks import notify_order_placed, record_audit

try:
    from django.tasks import default_task_backend
    from django.tasks.exceptions import TaskResultDoesNotExist
except ImportError:  # Django 5.2 and the django-tasks backport
    from django_tasks import default_task_backend
    from django_tasks.exceptions import TaskResultDoesNotExist


@csrf_exempt  # a JSON API called by other services, not a form
@require_POST
def place_order(request: HttpRequest) -> JsonResponse:
    """Accept an order; its notification and audit record happen in the background."""
    order_id = str(json.loads(request.body)["id"])
    notified = notify_order_placed.enqueue(order_id)
    audited = record_audit.enqueue(order_id)
    tasks = {"notify": [notified.id, notified.status], "audit": [audited.id, audited.status]}
    return JsonResponse({"id": order_id, "tasks": tasks}, status=202)


@require_GET
def task_status(request: HttpRequest, result_id: str) -> JsonResponse:
    """A task's status, as this worker process knows it (results live in its memory)."""
    try:
        result = default_task_backend.get_result(result_id)
    except TaskResultDoesNotExist:
        return JsonResponse({"error": "no such task in this worker process"}, status=404)
    return JsonResponse({"id": result.id, "task": result.task.name, "status": result.status})
