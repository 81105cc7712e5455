"""The view: answer the request at once, notify another service in the background."""

from __future__ import annotations

import json

from django.conf import settings
from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

import asyncbridge
from asyncbridge.aiohttp import post_json


async def notify_order_placed(url: str, order_id: str) -> None:
    """POST the event with the worker's shared aiohttp session; runs on the bridge loop."""
    await post_json(url, {"id": order_id, "event": "order-placed"})


@csrf_exempt  # a JSON API called by other services, not a form
@require_POST
def place_order(request: HttpRequest) -> JsonResponse:
    """Accept an order and hand the notification to the background loop."""
    order_id = str(json.loads(request.body)["id"])
    accepted = asyncbridge.run_soon(notify_order_placed(settings.NOTIFY_URL, order_id))
    return JsonResponse({"id": order_id, "notification_queued": accepted}, status=202)
