"""The client side of the Django examples' ``POST /orders/`` (examples/django, django_tasks)."""

from __future__ import annotations

import json
import urllib.request
from typing import Any

__all__ = ["post_order"]


def post_order(base: str, order_id: str) -> dict[str, Any]:
    """Place an order at ``base``; the example must answer 202 Accepted. Returns its JSON."""
    request = urllib.request.Request(
        base + "/orders/",
        data=json.dumps({"id": order_id}).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 202
        answer: dict[str, Any] = json.loads(response.read())
        return answer
