"""The demo's dashboard in a real headless Chromium (Debian's ``chromium``, driven by Playwright).

Skipped, with the reason, where the browser cannot be had: ``scripts/test.d/chromium.sh``
installs it where it can. Screenshots go to each test's tmp dir; their paths are printed.
"""

from __future__ import annotations

import collections
import http.client
import json
import signal
import statistics
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from .procs import PYTHON, Server, free_port, http_get, wait_http
from .test_demo import kill_leftovers

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page, Response

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

# Holds the page's "snapshot" events until the test releases them, and notes when the stream
# opened: the page must say "connecting" in between.
HOLD_SNAPSHOTS = """
(() => {
  const Real = window.EventSource;
  window.__held = [];
  window.__opened = false;
  window.EventSource = class extends Real {
    constructor(...args) {
      super(...args);
      super.addEventListener("open", () => { window.__opened = true; });
    }
    addEventListener(type, listener, options) {
      if (type !== "snapshot") return super.addEventListener(type, listener, options);
      return super.addEventListener(type, (e) => window.__held.push(() => listener(e)), options);
    }
  };
  window.__release = () => window.__held.splice(0).forEach((deliver) => deliver());
})();
"""

# Records what the page shows right after it handled the first snapshot, before any other
# event: what a reload shows at once.
CAPTURE_SNAPSHOT = """
(() => {
  const Real = window.EventSource;
  window.EventSource = class extends Real {
    addEventListener(type, listener, options) {
      if (type !== "snapshot") return super.addEventListener(type, listener, options);
      return super.addEventListener(type, (e) => {
        listener(e);
        if (window.__atSnapshot) return;
        const text = (id) => document.getElementById(id).textContent;
        window.__atSnapshot = {
          snapshot: JSON.parse(e.data),
          status: text("status"),
          total: text("total"),
          rate: text("rate"),
          recent: [...document.querySelectorAll("#recent .rpath")].map((el) => el.textContent),
          points: window.dashboard.state.series.length,
        };
      }, options);
    }
  };
})();
"""


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


class _Demo:
    """demo.run with fixed ports, its log in the tmp dir; always torn down."""

    def __init__(self, tmp_path: Path, *extra: str) -> None:
        self.hub_port, self.app_port = free_port(), free_port()
        self.hub = f"http://127.0.0.1:{self.hub_port}"
        ports = ["--hub-port", str(self.hub_port), "--app-port", str(self.app_port)]
        self.server = Server([PYTHON, "-m", "demo.run", *ports, *extra], log=tmp_path / "demo.log")
        wait_http(f"{self.hub}/api/counts", 20, self.server.proc)
        wait_http(f"http://127.0.0.1:{self.app_port}/stats", 30, self.server.proc)

    def counts(self) -> dict[str, Any]:
        status, body = http_get(f"{self.hub}/api/counts")
        assert status == 200
        result: dict[str, Any] = json.loads(body)
        return result

    def stop_cleanly(self) -> str:
        self.server.signal(signal.SIGINT)
        assert self.server.wait(45) == 0, self.server.output()[-3000:]
        output = self.server.output()
        assert "demo stopped cleanly" in output
        return output

    def close(self) -> None:
        self.server.stop()
        kill_leftovers(self.server.log_path.read_text(errors="replace"))


@pytest.fixture
def start_demo(tmp_path: Path) -> Iterator[Any]:
    demos: list[_Demo] = []

    def start(*extra: str) -> _Demo:
        demos.append(_Demo(tmp_path, *extra))
        return demos[-1]

    try:
        yield start
    finally:
        for demo in demos:
            demo.close()


class _Watched:
    """A page whose failed responses and script errors are recorded, to be asserted empty."""

    def __init__(self, browser: Browser, width: int, height: int) -> None:
        self.page = browser.new_page(viewport={"width": width, "height": height})
        self.bad: list[str] = []
        self.page.on("response", self._on_response)
        self.page.on("pageerror", lambda exc: self.bad.append(f"script error: {exc}"))

    def _on_response(self, response: Response) -> None:
        if response.status >= 400:
            self.bad.append(f"{response.status} {response.url}")

    def check(self) -> None:
        assert self.bad == [], self.bad


def _screenshot(page: Page, path: Path) -> None:
    page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 10_000
    print(f"screenshot: {path}")


def _track(port: int, path: str) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("POST", f"/track?path={path}")
        response = conn.getresponse()
        assert (response.status, json.loads(response.read())) == (202, {"queued": True})
    finally:
        conn.close()


def test_dashboard_shows_every_hit_live(browser: Browser, start_demo: Any, tmp_path: Path) -> None:
    from playwright.sync_api import expect

    demo = start_demo()
    watched = _Watched(browser, 1280, 900)
    page = watched.page
    page.goto(f"{demo.hub}/")
    expect(page.get_by_test_id("status")).to_have_text("live", timeout=10_000)
    expect(page.get_by_test_id("total")).to_have_text("0")

    weights = {"/": 9, "/pricing": 7, "/docs": 5, "/blog": 3, "/signup": 1}
    sent: collections.Counter[str] = collections.Counter()
    for path, n in weights.items():
        for _ in range(n):
            _track(demo.app_port, path)
            sent[path] += 1
    total = sum(sent.values())

    # No reload: the numbers arrive over the page's open event stream.
    expect(page.get_by_test_id("total")).to_have_text(str(total), timeout=5_000)
    for path, n in sent.items():
        row = page.locator(f'#paths tr[data-path="{path}"] td.num')
        expect(row).to_have_text(str(n), timeout=5_000)
    expect(page.locator("#recent li")).to_have_count(12)

    # The icon the page links to, and the one a browser asks for without a link: no 404.
    icon = page.locator('link[rel="icon"]').get_attribute("href")
    for url in (f"{demo.hub}{icon}", f"{demo.hub}/favicon.ico"):
        response = page.request.get(url)
        assert (response.status, response.headers["content-type"]) == (200, "image/svg+xml")
    _screenshot(page, tmp_path / "dashboard.png")
    watched.check()
    demo.stop_cleanly()


def test_dashboard_says_connecting_until_the_first_snapshot(
    browser: Browser, start_demo: Any
) -> None:
    from playwright.sync_api import expect

    demo = start_demo()
    for _ in range(3):
        _track(demo.app_port, "/docs")
    watched = _Watched(browser, 1280, 900)
    page = watched.page
    page.add_init_script(HOLD_SNAPSHOTS)
    page.goto(f"{demo.hub}/")
    page.wait_for_function("window.__opened && window.__held.length === 1", timeout=10_000)
    # Connected, but the page does not know the counts yet: no green badge, no zero.
    expect(page.get_by_test_id("status")).to_have_text("connecting…")
    expect(page.get_by_test_id("status")).not_to_have_class("status live")
    expect(page.get_by_test_id("total")).to_have_text("\u2013")  # an en dash, not 0
    page.evaluate("window.__release()")
    expect(page.get_by_test_id("status")).to_have_text("live")
    expect(page.get_by_test_id("total")).to_have_text("3")
    watched.check()


def test_a_reload_mid_traffic_shows_the_totals_latest_hits_and_rate_at_once(
    browser: Browser, start_demo: Any, tmp_path: Path
) -> None:
    from playwright.sync_api import expect

    demo = start_demo("--traffic", "2000", "--rate", "20")
    watched = _Watched(browser, 1280, 900)
    page = watched.page
    page.goto(f"{demo.hub}/")
    page.wait_for_function(
        "window.dashboard.state.total >= 60 && window.dashboard.state.series.length >= 2",
        timeout=30_000,
    )
    page.add_init_script(CAPTURE_SNAPSHOT)
    before = demo.counts()["total"]
    page.reload()
    page.wait_for_function("window.__atSnapshot !== undefined", timeout=10_000)
    after = demo.counts()["total"]
    shown = page.evaluate("window.__atSnapshot")
    snapshot = shown["snapshot"]
    # What the page showed from the snapshot alone, before any other event:
    assert before <= snapshot["total"] <= after
    assert shown["status"] == "live"
    assert shown["total"] == str(snapshot["total"])
    assert shown["recent"] == [hit["path"] for hit in snapshot["recent"]]
    assert len(shown["recent"]) == 12
    assert snapshot["rate"] > 0
    assert shown["rate"] == f"{snapshot['rate']:.1f}"
    assert shown["points"] == len(snapshot["series"]) >= 2
    expect(page.get_by_test_id("status")).to_have_text("live")
    _screenshot(page, tmp_path / "after-reload.png")
    watched.check()


def test_at_420px_the_badge_stays_on_one_line(
    browser: Browser, start_demo: Any, tmp_path: Path
) -> None:
    from playwright.sync_api import expect

    demo = start_demo()
    watched = _Watched(browser, 420, 900)
    page = watched.page
    page.goto(f"{demo.hub}/")
    expect(page.get_by_test_id("status")).to_have_text("live", timeout=10_000)
    # The badge's height against a copy of it that cannot wrap ("● " is a ::before, which a
    # text range would not see).
    measure = """(text) => {
      const el = document.getElementById("status");
      if (text) el.textContent = text;
      const one = el.cloneNode(true);
      Object.assign(one.style, { position: "absolute", whiteSpace: "nowrap" });
      one.style.width = "max-content";
      el.parentNode.appendChild(one);
      const box = el.getBoundingClientRect();
      const shape = {
        height: box.height,
        oneLine: one.getBoundingClientRect().height,
        right: box.right,
        page: document.documentElement.scrollWidth,
      };
      one.remove();
      return shape;
    }"""
    shape = page.evaluate(measure, None)
    assert shape["height"] == shape["oneLine"], shape
    assert shape["right"] <= 420 and shape["page"] == 420, shape
    _screenshot(page, tmp_path / "dashboard-420px.png")
    for text in ("connecting…", "reconnecting…"):  # the longest texts it takes
        shape = page.evaluate(measure, text)
        assert shape["height"] == shape["oneLine"], shape
        assert shape["right"] <= 420 and shape["page"] == 420, shape
    watched.check()


def test_the_switch_takes_the_push_off_the_request_and_the_plotted_time_falls(
    browser: Browser, start_demo: Any, tmp_path: Path
) -> None:
    from playwright.sync_api import expect

    # The hub takes 0.2 s to accept each push: inline, every request waits that long.
    hub_delay_ms = 200
    demo = start_demo(
        *("--mode", "inline", "--hub-delay", str(hub_delay_ms / 1000)),
        *("--traffic", "2000", "--rate", "8"),
    )
    watched = _Watched(browser, 1280, 900)
    page = watched.page
    page.goto(f"{demo.hub}/")
    expect(page.get_by_test_id("status")).to_have_text("live", timeout=10_000)
    expect(page.get_by_test_id("mode-inline")).to_have_attribute("aria-pressed", "true")
    points_in = "window.dashboard.state.series.filter((p) => p.mode === {!r} && p.requests)"
    page.wait_for_function(points_in.format("inline") + ".length >= 3", timeout=30_000)

    page.get_by_test_id("mode-asyncbridge").click()
    expect(page.get_by_test_id("mode-asyncbridge")).to_have_attribute("aria-pressed", "true")
    page.wait_for_function(points_in.format("asyncbridge") + ".length >= 3", timeout=30_000)

    plotted: list[dict[str, Any]] = page.evaluate("window.dashboard.state.series")
    status, body = http_get(f"{demo.hub}/api/series")
    assert status == 200
    hub_points = {p["t"]: p for p in json.loads(body)}
    assert all(hub_points[p["t"]] == p for p in plotted)  # the page plots the hub's numbers
    inline = [p for p in plotted if p["mode"] == "inline" and p["requests"]]
    background = [p for p in plotted if p["mode"] == "asyncbridge" and p["requests"]]
    # Inline, each request waited for the hub; handed to run_soon, the typical one no longer
    # does. Arrival delays are plotted in both modes.
    assert all(p["req_p50"] >= hub_delay_ms for p in inline), inline
    assert all(p["req_p50"] < hub_delay_ms for p in background), background
    assert all(p["pushes"] and p["arr_p50"] is not None for p in inline + background)
    figures = {
        mode: {
            key: round(statistics.median(p[key] for p in points), 2)
            for key in ("req_p50", "req_p99", "arr_p50", "arr_p99")
        }
        for mode, points in (("inline", inline), ("asyncbridge", background))
    }
    print(f"plotted medians per mode (ms): {figures}")

    page.locator(".chart-card").screenshot(path=str(tmp_path / "graph.png"))
    print(f"screenshot: {tmp_path / 'graph.png'}")
    _screenshot(page, tmp_path / "dashboard-switched.png")
    watched.check()
    output = demo.stop_cleanly()
    assert "NOT OK" not in output
