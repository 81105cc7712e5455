"""Tests of the shop's view and tasks, with asyncbridge's pytest plugin.

Run from the repository root: ``python -m pytest examples/django_tasks``.

Django's ImmediateBackend would run ``notify_order_placed`` on an event loop of its own, where
``asyncbridge.aiohttp`` refuses to work. With the ``asyncbridge_eager`` fixture, the tasks run
on the bridge as in production, and ``enqueue()`` returns once they have finished, so the test
can assert right after the request. ``asyncbridge_bridge`` keeps production's background
behaviour: ``drain()`` before asserting.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.test import Client
from shop import tasks

from asyncbridge.pytest_plugin import EagerBridge, RecordingBridge


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """Replace both HTTP calls with fakes that record what would have been posted."""
    calls: list[tuple[str, str]] = []

    async def fake_post_json(url: str, payload: Any, **kwargs: Any) -> None:
        calls.append(("notify", payload["id"]))

    class Answer:
        status = 200

        def __enter__(self) -> Answer:
            return self

        def __exit__(self, *exc: object) -> None:
            pass

    def fake_urlopen(request: Any, timeout: float) -> Answer:
        calls.append(("audit", json.loads(request.data)["id"]))
        return Answer()

    monkeypatch.setattr(tasks, "post_json", fake_post_json)
    monkeypatch.setattr(tasks.urllib.request, "urlopen", fake_urlopen)
    return calls


def _order(order_id: str) -> dict[str, Any]:
    response = Client().post(
        "/orders/", data=json.dumps({"id": order_id}), content_type="application/json"
    )
    assert response.status_code == 202
    answer: dict[str, Any] = response.json()
    return answer


def test_an_order_runs_both_tasks(
    asyncbridge_eager: EagerBridge, sent: list[tuple[str, str]]
) -> None:
    answer = _order("42")

    # Eager: both tasks have run, on the bridge, before the view answered.
    assert sent == [("notify", "42"), ("audit", "audit-42")]
    assert {name: status for name, (_, status) in answer["tasks"].items()} == {
        "notify": "SUCCESSFUL",
        "audit": "SUCCESSFUL",
    }
    assert asyncbridge_eager.completed == 2


def test_orders_in_the_background(
    asyncbridge_bridge: RecordingBridge, sent: list[tuple[str, str]]
) -> None:
    answers = [_order(str(i)) for i in range(5)]

    assert asyncbridge_bridge.drain(timeout=5)
    assert sorted(sent) == sorted(
        [("notify", str(i)) for i in range(5)] + [("audit", f"audit-{i}") for i in range(5)]
    )
    # The status view reads this process's results.
    result_id = answers[0]["tasks"]["notify"][0]
    assert Client().get(f"/tasks/{result_id}/").json()["status"] == "SUCCESSFUL"
