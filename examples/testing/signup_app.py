"""A tiny Flask app whose view hands a notification to asyncbridge and answers at once.

Run it with ``flask --app signup_app run`` (set ``PUSH_URL``); its tests are in
``test_signup_app.py`` and use the asyncbridge pytest plugin.
"""

from __future__ import annotations

import os

from flask import Flask, request

import asyncbridge
from asyncbridge.aiohttp import post_json


async def send_welcome(push_url: str, email: str) -> None:
    """Tell the push service about the new user; runs on the bridge loop."""
    await post_json(push_url, {"event": "signup", "email": email})


def create_app(push_url: str | None = None) -> Flask:
    """Build the app. ``push_url`` defaults to the ``PUSH_URL`` environment variable."""
    app = Flask(__name__)
    target = push_url or os.environ.get("PUSH_URL", "http://127.0.0.1:8001/notify")

    @app.post("/signup")
    def signup() -> tuple[dict[str, str], int]:
        email = str(request.get_json()["email"])
        # Fire and forget: the response does not wait for the push service.
        asyncbridge.run_soon(send_welcome(target, email))
        return {"status": "welcome on its way"}, 202

    return app
