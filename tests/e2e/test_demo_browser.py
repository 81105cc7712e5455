"""The demo's dashboard in a real headless Chromium (Debian's ``chromium``, driven by Playwright).

Skipped, with the reason, where the browser cannot be had: ``scripts/test.d/chromium.sh``
installs it where it can. Screenshots go to ``.artifacts/`` (git-ignored), one per run.
"""

from __future__ import annotations

import collections
import http.client
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from .procs import PYTHON, ROOT, free_port, running, wait_http

if TYPE_CHECKING:
    from playwright.sync_api import Browser

pytestmark = [pytest.mark.e2e, pytest.mark.browser]

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = ROOT / ".artifacts"


@pytest.fixture
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        pytest.skip(
            f"{CHROMIUM} is missing: install Debian's chromium package "
            "(scripts/test.d/chromium.sh does it when run as root with apt-get)"
        )
    try:
        from playwright.sync_api import Error, sync_playwright
    except ImportError as exc:
        pytest.skip(f"the playwright package is not installed: {exc}")
    with sync_playwright() as p:
        try:
            launched = p.chromium.launch(
                executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
            )
        except Error as exc:
            pytest.skip(f"Playwright could not launch {CHROMIUM}: {exc}")
        try:
            yield launched
        finally:
            launched.close()


def _track(port: int, path: str) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("POST", f"/track?path={path}")
        response = conn.getresponse()
        assert (response.status, json.loads(response.read())) == (202, {"queued": True})
    finally:
        conn.close()


def test_dashboard_shows_every_hit_live(browser: Browser, tmp_path: Path) -> None:
    from playwright.sync_api import expect

    hub_port, app_port = free_port(), free_port()
    argv = [PYTHON, "-m", "demo.run", "--hub-port", str(hub_port), "--app-port", str(app_port)]
    with running(argv, log=tmp_path / "demo.log") as demo:
        wait_http(f"http://127.0.0.1:{hub_port}/api/counts", 20, demo.proc)
        wait_http(f"http://127.0.0.1:{app_port}/stats", 30, demo.proc)

        page = browser.new_page(viewport={"width": 1280, "height": 560})
        page.goto(f"http://127.0.0.1:{hub_port}/")
        expect(page.get_by_test_id("status")).to_have_text("live", timeout=10_000)
        expect(page.get_by_test_id("total")).to_have_text("0")

        weights = {"/": 9, "/pricing": 7, "/docs": 5, "/blog": 3, "/signup": 1}
        sent: collections.Counter[str] = collections.Counter()
        for path, n in weights.items():
            for _ in range(n):
                _track(app_port, path)
                sent[path] += 1
        total = sum(sent.values())

        # No reload: the numbers arrive over the page's open event stream.
        expect(page.get_by_test_id("total")).to_have_text(str(total), timeout=5_000)
        for path, n in sent.items():
            row = page.locator(f'#paths tr[data-path="{path}"] td.num')
            expect(row).to_have_text(str(n), timeout=5_000)

        ARTIFACTS.mkdir(exist_ok=True)
        shot = ARTIFACTS / f"dashboard-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.png"
        page.screenshot(path=str(shot))
        print(f"screenshot: {shot}")
        assert shot.stat().st_size > 10_000
        page.close()
