"""Unit tests of a Flask view that uses ``asyncbridge.run_soon``, with the pytest plugin.

The ``asyncbridge_eager`` fixture runs each handed-off coroutine to completion before
``run_soon`` returns, so the test can assert right after the request. ``asyncbridge_bridge``
keeps production's background behaviour; the test calls ``drain()`` before asserting.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import signup_app
from flask.testing import FlaskClient

from asyncbridge.pytest_plugin import EagerBridge, RecordingBridge

PUSH_URL = "http://push.invalid/notify"


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, Any]]:
    """Replace the HTTP call with a fake that records what would have been posted."""
    calls: list[tuple[str, Any]] = []

    async def fake_post_json(url: str, payload: Any, **kwargs: Any) -> None:
        await asyncio.sleep(0.05)  # as slow as a real push service, give or take
        if payload["email"].endswith("@down.invalid"):
            raise ConnectionError("push service unreachable")
        calls.append((url, payload))

    monkeypatch.setattr(signup_app, "post_json", fake_post_json)
    return calls


@pytest.fixture
def client() -> FlaskClient:
    return signup_app.create_app(PUSH_URL).test_client()


def test_signup_sends_the_welcome_notification(
    asyncbridge_eager: EagerBridge, client: FlaskClient, sent: list[tuple[str, Any]]
) -> None:
    response = client.post("/signup", json={"email": "ada@example.org"})

    assert response.status_code == 202
    # Eager mode: the coroutine has already run.
    assert sent == [(PUSH_URL, {"event": "signup", "email": "ada@example.org"})]
    assert asyncbridge_eager.completed == 1


def test_a_failed_notification_does_not_fail_the_request(
    asyncbridge_eager: EagerBridge, client: FlaskClient, sent: list[tuple[str, Any]]
) -> None:
    response = client.post("/signup", json={"email": "bob@down.invalid"})

    assert response.status_code == 202
    assert sent == []
    assert asyncbridge_eager.failed == 1
    assert [type(exc) for exc in asyncbridge_eager.exceptions] == [ConnectionError]


def test_many_signups_in_the_background(
    asyncbridge_bridge: RecordingBridge, client: FlaskClient, sent: list[tuple[str, Any]]
) -> None:
    for i in range(20):
        assert client.post("/signup", json={"email": f"user{i}@example.org"}).status_code == 202

    assert asyncbridge_bridge.drain(timeout=5)
    assert sorted(payload["email"] for _, payload in sent) == sorted(
        f"user{i}@example.org" for i in range(20)
    )
    assert (asyncbridge_bridge.completed, asyncbridge_bridge.failed) == (20, 0)
