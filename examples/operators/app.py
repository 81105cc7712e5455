"""A Flask app that hands a notification to asyncbridge per request and serves /metrics."""

import os

from flask import Flask, Response

import asyncbridge
import asyncbridge.prometheus
from asyncbridge.aiohttp import post_json

PUSH_URL = os.environ.get("PUSH_URL", "http://127.0.0.1:9/push")

app = Flask(__name__)


@app.post("/signup/<user>")
def signup(user: str) -> str:
    asyncbridge.run_soon(post_json(PUSH_URL, {"event": "signup", "user": user}))
    return "welcome\n"


@app.get("/metrics")
def metrics() -> Response:
    # Every worker's figures (it reads the status directory), whichever worker answers.
    body, content_type = asyncbridge.prometheus.render()
    return Response(body, content_type=content_type)
