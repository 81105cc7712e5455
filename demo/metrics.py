"""Request timing for the dashboard's graph: the app's side.

:class:`RequestTimer` wraps the WSGI app and times every request that tracked a hit, from the
moment the worker calls the app to the moment the app returns its response. A thread of each
worker reports the samples to the hub (``POST /metrics``, signed) twice a second; it is not on any
request's path, and it does not go through asyncbridge, so that the drain reports count hits only.
The hub turns the samples into a p50 and a p99 per second.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import urllib.request
from collections.abc import Iterable
from typing import TYPE_CHECKING

from .signing import SIGNATURE_HEADER, sign

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

__all__ = ["MODE_KEY", "RequestTimer"]

MODE_KEY = "demo.mode"
"""The WSGI environ key a view sets to the mode it pushed with; only such requests are timed."""

logger = logging.getLogger("demo.metrics")


class RequestTimer:
    """WSGI middleware that times tracked requests and reports them to the hub.

    Args:
        app: The WSGI app.
        hub_url: The hub's base URL.
        secret: The shared secret the reports are signed with.
        interval: Seconds between reports.
    """

    def __init__(
        self, app: WSGIApplication, hub_url: str, secret: bytes, *, interval: float = 0.5
    ) -> None:
        self.app = app
        self.url = hub_url.rstrip("/") + "/metrics"
        self._secret = secret
        self.interval = interval
        self._lock = threading.Lock()
        self._samples: list[tuple[float, float, str]] = []
        self._reporter_pid = 0

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        started = time.perf_counter()
        try:
            return self.app(environ, start_response)
        finally:
            mode = environ.get(MODE_KEY)
            if mode is not None:
                self._record((time.perf_counter() - started) * 1000.0, str(mode))

    def _record(self, ms: float, mode: str) -> None:
        with self._lock:
            self._samples.append((time.time(), round(ms, 3), mode))
            if self._reporter_pid != os.getpid():  # first tracked request of this worker
                self._reporter_pid = os.getpid()
                threading.Thread(target=self._report, name="demo-metrics", daemon=True).start()

    def _report(self) -> None:
        failing = False
        while True:
            time.sleep(self.interval)
            with self._lock:
                samples, self._samples = self._samples, []
            if not samples:
                continue
            body = json.dumps({"pid": os.getpid(), "samples": samples}).encode()
            try:
                self._post(body)
            except OSError as exc:
                if not failing:
                    logger.warning("could not report request timings to the hub: %s", exc)
                failing = True
            else:
                failing = False

    def _post(self, body: bytes) -> None:
        headers = {"Content-Type": "application/json", SIGNATURE_HEADER: sign(self._secret, body)}
        request = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
        with urllib.request.urlopen(request, timeout=5) as response:
            response.read()
