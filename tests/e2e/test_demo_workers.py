"""The dashboard's "Background loops" panel in a real headless Chromium, against the real demo.

Each gunicorn worker's asyncbridge loop publishes its counts in the demo's status directory; the
hub reads them and streams them to the page. The panel must list exactly the live workers (as
the kernel knows them: the gunicorn master's children) and its figures must add up to what the
hub received and to each worker's drain report. Skipped, with the reason, without Chromium.
"""

from __future__ import annotations

import concurrent.futures
import os
import re
import signal
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from . import test_demo_browser
from .procs import http_get
from .sink import wait_until
from .test_demo import _reports
from .test_demo_browser import _screenshot, _track, _Watched

if TYPE_CHECKING:
    from playwright.sync_api import Page


pytestmark = [pytest.mark.e2e, pytest.mark.browser]

# The browser and the demo, as the dashboard's other tests have them (pytest fixtures).
browser = test_demo_browser.browser
start_demo = test_demo_browser.start_demo

MASTER = re.compile(r"Listening at: \S+ \((\d+)\)")
WORKERS = 3
HITS = 150
PATHS = ("/", "/pricing", "/docs", "/blog", "/signup")

# The panel as the page shows it: one entry per row of the table's body, and the footer.
READ_PANEL = """() => {
  const figures = (tr) => Object.fromEntries(
    [...tr.querySelectorAll("td[data-key]")].map((td) => [td.dataset.key, td.textContent]));
  const rows = [...document.querySelectorAll("#loops tbody tr[data-pid]")].map((tr) => ({
    pid: Number(tr.dataset.pid),
    live: tr.dataset.live,
    state: tr.querySelector("td.state").textContent,
    ...figures(tr),
  }));
  const foot = document.querySelector("#loops tfoot tr");
  return {
    rows,
    all: foot ? { label: foot.querySelector("td.pid").textContent, ...figures(foot) } : null,
  };
}"""

# True once the panel shows the loops idle with ``total`` pushes completed between them.
IDLE_WITH = """(total) => {
  const rows = [...document.querySelectorAll("#loops tbody tr[data-pid]")];
  const value = (tr, key) => Number(tr.querySelector(`td[data-key="${key}"]`).textContent);
  const completed = rows.reduce((sum, tr) => sum + value(tr, "completed"), 0);
  return rows.length > 0 && completed === total
    && rows.every((tr) => value(tr, "pending") === 0 && value(tr, "running") === 0);
}"""


def _children(pid: int) -> set[int]:
    """The live processes whose parent is ``pid``, from /proc (not from what anyone published)."""
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue  # gone meanwhile
        fields = text.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid and fields[0] != "Z":
            found.add(int(stat.parent.name))
    return found


def _panel(page: Page) -> dict[str, Any]:
    result: dict[str, Any] = page.evaluate(READ_PANEL)
    return result


def _wait_panel(page: Page, demo: Any, condition: str, arg: Any = None) -> None:
    """Wait (15 s at most) until ``condition(arg)`` holds on the page; on a timeout, fail with
    what the page and the hub showed."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    try:
        page.wait_for_function(condition, arg=arg, timeout=15_000)
    except PlaywrightTimeout:
        status, body = http_get(f"{demo.hub}/api/loops")
        pytest.fail(
            f"the panel never showed it: {_panel(page)}; the hub's counts {demo.counts()}; "
            f"/api/loops: {status} {body.decode(errors='replace')}"
        )


def _figures(cells: dict[str, str]) -> dict[str, int]:
    keys = ("accepted", "pending", "running", "completed", "failed", "dropped", "lost", "received")
    return {key: int(cells[key]) for key in keys}


def test_the_loops_panel_lists_each_live_worker_and_adds_up_to_the_hubs_count(
    browser: Any, start_demo: Any, tmp_path: Path
) -> None:
    from playwright.sync_api import expect

    demo = start_demo("--workers", str(WORKERS))
    found = MASTER.search(demo.server.output())
    assert found, demo.server.output()[-3000:]
    master = int(found.group(1))
    assert wait_until(lambda: len(_children(master)) == WORKERS, timeout=20)
    workers = _children(master)

    watched = _Watched(browser, 1280, 900)
    page = watched.page
    page.goto(f"{demo.hub}/")
    expect(page.get_by_test_id("status")).to_have_text("live", timeout=10_000)
    # Every worker's loop publishes at its start: a row each, at zero, before any traffic.
    _wait_panel(
        page,
        demo,
        "(n) => document.querySelectorAll('#loops tbody tr[data-pid]').length === n",
        WORKERS,
    )
    before = _panel(page)
    assert {row["pid"] for row in before["rows"]} == workers
    assert all(_figures(row)["accepted"] == 0 for row in before["rows"]), before

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        sent = list(pool.map(lambda i: _track(demo.app_port, PATHS[i % len(PATHS)]), range(HITS)))
    assert len(sent) == HITS  # _track asserts each was answered 202 {"queued": true}
    assert wait_until(lambda: demo.counts()["total"] == HITS, timeout=20)
    received = demo.counts()["total"]

    # No reload: the figures arrive over the page's open event stream, once the loops are idle.
    _wait_panel(page, demo, IDLE_WITH, received)
    panel = _panel(page)
    rows = {row["pid"]: row for row in panel["rows"]}
    assert set(rows) == _children(master) == workers  # one row per live worker, no other
    assert all((row["live"], row["state"]) == ("true", "running") for row in rows.values())
    figures = {pid: _figures(row) for pid, row in rows.items()}
    assert sum(f["completed"] for f in figures.values()) == received == HITS
    for pid, f in figures.items():
        # Each worker's loop finished every push it took, and the hub got each one from it.
        assert f["accepted"] == f["completed"] == f["received"], (pid, f)
        assert (f["pending"], f["running"], f["failed"], f["dropped"], f["lost"]) == (0,) * 5
    assert panel["all"]["label"] == "all"  # no worker has exited
    assert _figures(panel["all"]) == {
        **dict.fromkeys(("pending", "running", "failed", "dropped", "lost"), 0),
        **dict.fromkeys(("accepted", "completed", "received"), HITS),
    }
    print(
        f"hits sent {HITS}, hub received {received}, panel completed per worker "
        f"{ {pid: f['completed'] for pid, f in sorted(figures.items())} } "
        f"(sum {sum(f['completed'] for f in figures.values())}), stalls "
        f"{ {pid: row['stalls'] for pid, row in sorted(rows.items())} }"
    )
    page.locator(".loops-card").screenshot(path=str(tmp_path / "loops-panel.png"))
    print(f"screenshot: {tmp_path / 'loops-panel.png'}")
    _screenshot(page, tmp_path / "dashboard-loops.png")

    # A phone, 420 px wide, loading the page: it stays as wide as the window, and every column
    # of the panel stays in view (the table would scroll inside its card rather than widen the
    # page). The same figures arrive in its first snapshot.
    watched.check()
    narrow = _Watched(browser, 420, 900)
    page = narrow.page
    page.goto(f"{demo.hub}/")
    expect(page.get_by_test_id("status")).to_have_text("live", timeout=10_000)
    assert _panel(page) == panel
    shape = page.evaluate(
        """() => {
          const scroll = document.querySelector(".loops-card .scroll");
          return {
            page: document.documentElement.scrollWidth,
            card: document.querySelector(".loops-card").getBoundingClientRect().right,
            table: scroll.scrollWidth,
            room: scroll.clientWidth,
          };
        }"""
    )
    assert shape["page"] == 420 and shape["card"] <= 420, shape
    assert shape["table"] <= shape["room"], shape
    _screenshot(page, tmp_path / "dashboard-loops-420px.png")
    narrow.check()

    # What the panel showed is what each worker's drain report says at the end.
    output = demo.stop_cleanly()
    reports = {r[0]: r[1:3] for r in _reports(output)}
    assert reports == {pid: (f["accepted"], f["completed"]) for pid, f in figures.items()}


def test_a_killed_worker_leaves_the_panel_and_its_figures_stay_in_the_total(
    browser: Any, start_demo: Any, tmp_path: Path
) -> None:
    from playwright.sync_api import expect

    demo = start_demo()
    found = MASTER.search(demo.server.output())
    assert found, demo.server.output()[-3000:]
    master = int(found.group(1))
    assert wait_until(lambda: len(_children(master)) == 2, timeout=20)
    watched = _Watched(browser, 1280, 900)
    page = watched.page
    page.goto(f"{demo.hub}/")
    expect(page.get_by_test_id("status")).to_have_text("live", timeout=10_000)
    for i in range(40):
        _track(demo.app_port, PATHS[i % len(PATHS)])
    assert wait_until(lambda: demo.counts()["total"] == 40, timeout=20)
    _wait_panel(page, demo, IDLE_WITH, 40)
    before = {row["pid"]: _figures(row) for row in _panel(page)["rows"]}
    assert set(before) == _children(master)

    # SIGKILL an idle worker: nothing was unfinished, so nothing is lost; gunicorn boots
    # another, and its master counts the killed one's figures into the total (child_exit).
    victim = max(before, key=lambda pid: before[pid]["completed"])
    os.kill(victim, signal.SIGKILL)

    def replaced() -> bool:
        # One reading of /proc: two readings could see the victim before its signal landed,
        # then not at all, before its replacement was forked.
        children = _children(master)
        return len(children) == 2 and victim not in children

    assert wait_until(replaced, timeout=20)
    live = _children(master)
    _wait_panel(
        page,
        demo,
        """([pids]) => {
          const rows = [...document.querySelectorAll("#loops tbody tr[data-pid]")];
          const shown = rows.map((tr) => Number(tr.dataset.pid)).sort((a, b) => a - b);
          return JSON.stringify(shown) === JSON.stringify(pids)
            && document.querySelector("#loops tfoot td.pid").textContent === "all (1 exited)";
        }""",
        [sorted(live)],
    )
    after = _panel(page)
    assert {row["pid"] for row in after["rows"]} == live
    assert all(row["live"] == "true" for row in after["rows"])
    total = _figures(after["all"])
    assert (total["completed"], total["received"], total["lost"]) == (40, 40, 0)

    # More traffic: the live rows count it, the total keeps the killed worker's part.
    for i in range(20):
        _track(demo.app_port, PATHS[i % len(PATHS)])
    assert wait_until(lambda: demo.counts()["total"] == 60, timeout=20)
    _wait_panel(page, demo, IDLE_WITH, 60 - before[victim]["completed"])
    _wait_panel(
        page,
        demo,
        "() => document.querySelector('#loops tfoot td[data-key=completed]').textContent === '60'",
    )
    final = _panel(page)
    assert {row["pid"] for row in final["rows"]} == live == _children(master)
    total = _figures(final["all"])
    assert (total["accepted"], total["completed"], total["received"], total["lost"]) == (
        60,
        60,
        60,
        0,
    )
    print(
        f"hits sent 60, hub received {demo.counts()['total']}; killed worker {victim} had "
        f"completed {before[victim]['completed']}; panel after: "
        f"{ {row['pid']: row['completed'] for row in final['rows']} }, all {total['completed']}"
    )
    _screenshot(page, tmp_path / "dashboard-after-kill.png")
    watched.check()

    # The master counted the killed worker (it had nothing unfinished), and the demo's summary
    # flags it as the one worker without a drain report.
    demo.server.signal(signal.SIGINT)
    assert demo.server.wait(45) == 1
    output = demo.server.output()
    lost_line = f"asyncbridge: worker {victim} ended without draining: at least 0 accepted jobs"
    assert output.count(lost_line) == 1, output[-3000:]
    assert re.findall(r"NOT OK: .*", output) == [f"NOT OK: worker {victim} logged no drain report"]
