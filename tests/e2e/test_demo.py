"""The live-analytics demo, end to end without a browser: the real hub, gunicorn and demo.run."""

from __future__ import annotations

import collections
import contextlib
import hashlib
import hmac
import http.client
import json
import os
import re
import signal
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from .procs import PYTHON, Server, free_port, running, wait_http
from .sink import wait_until

pytestmark = pytest.mark.e2e

HEADER = "X-Hub-Signature-256"
REPORT = re.compile(
    r"asyncbridge shutdown of pid (\d+) .*?: accepted=(\d+) completed=(\d+) failed=(\d+)"
    r" timed_out=(\d+) cancelled=(\d+) dropped_full=(\d+) dropped_closed=(\d+)"
)


def _secret() -> str:
    return "test-secret-" + uuid.uuid4().hex


def _signature(secret: str, body: bytes) -> str:
    # Computed here, not with demo.signing, so that the test checks the hub against the scheme.
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def _request(
    port: int, method: str, target: str, body: bytes = b"", headers: dict[str, str] | None = None
) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, target, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def _counts(hub_port: int) -> dict[str, Any]:
    status, body = _request(hub_port, "GET", "/api/counts")
    assert status == 200, body
    result: dict[str, Any] = json.loads(body)
    return result


class _EventStream:
    """A minimal Server-Sent Events reader over one HTTP connection."""

    def __init__(self, port: int) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        self.conn.request("GET", "/stream")
        self.response = self.conn.getresponse()
        assert self.response.status == 200
        assert self.response.getheader("Content-Type", "").startswith("text/event-stream")

    def next_event(self, skip: tuple[str, ...] = ("tick",)) -> tuple[str, dict[str, Any]]:
        """The next event whose name is not in ``skip`` (the graph's ticks, by default)."""
        name, data = "", ""
        while True:
            line = self.response.readline().decode()
            assert line, "the event stream ended"
            line = line.rstrip("\n")
            if line.startswith("event: "):
                name = line[len("event: ") :]
            elif line.startswith("data: "):
                data = line[len("data: ") :]
            elif line == "" and name:
                if name not in skip:
                    return name, json.loads(data)
                name, data = "", ""

    def close(self) -> None:
        self.conn.close()


def _listening_addresses(port: int) -> set[str]:
    """Local addresses in LISTEN state on ``port`` (IPv4 and IPv6), read from /proc/net."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        path = Path(table)
        if not path.exists():
            continue
        for row in path.read_text().splitlines()[1:]:
            fields = row.split()
            address, hex_port = fields[1].rsplit(":", 1)
            if int(hex_port, 16) == port and fields[3] == "0A":
                found.add(address)
    return found


# Every server process the demo starts, from its log, to be sure none outlives a failed test:
# they run in sessions of their own, out of reach of a kill of demo.run's process group.
_SERVER_PIDS = (
    re.compile(r"hub \(pid (\d+)\) listening"),
    re.compile(r"Listening at: \S+ \((\d+)\)"),
    re.compile(r"Booting worker with pid: (\d+)"),
)


def server_pids(output: str) -> set[int]:
    """The pids of the hub, the gunicorn master and its workers, as their logs name them."""
    return {int(m.group(1)) for pattern in _SERVER_PIDS for m in pattern.finditer(output)}


def kill_leftovers(output: str) -> None:
    """SIGKILL every server of the demo named in ``output`` that still runs."""
    for pid in server_pids(output):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue  # gone
        if b"demo" in cmdline or b"gunicorn" in cmdline:  # not a recycled pid
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


class _Demo(Server):
    """demo.run as a test server; its own servers are killed too at teardown if still there."""

    def stop(self) -> None:
        super().stop()
        kill_leftovers(self.log_path.read_text(errors="replace"))


def _start_demo(tmp_path: Path, secret: str, *extra: str, **env: str) -> tuple[Server, int, int]:
    hub_port, app_port = free_port(), free_port()
    argv = [PYTHON, "-m", "demo.run", "--hub-port", str(hub_port), "--app-port", str(app_port)]
    server = _Demo([*argv, *extra], log=tmp_path / "demo.log", env={"DEMO_SECRET": secret, **env})
    return server, hub_port, app_port


def _reports(output: str) -> list[tuple[int, ...]]:
    """(pid, accepted, completed, failed, timed_out, cancelled, dropped_full, dropped_closed)
    from each drain report that a gunicorn worker logged (demo.run repeats them at the end)."""
    by_pid = {int(m.group(1)): tuple(map(int, m.groups())) for m in REPORT.finditer(output)}
    return list(by_pid.values())


def test_hub_accepts_only_events_signed_with_the_shared_secret(tmp_path: Path) -> None:
    secret = _secret()
    port = free_port()
    argv = [PYTHON, "-m", "demo.hub", "--port", str(port)]
    with running(argv, log=tmp_path / "hub.log", env={"DEMO_SECRET": secret}) as hub:
        wait_http(f"http://127.0.0.1:{port}/api/counts", 15, hub.proc)
        stream = _EventStream(port)
        try:
            name, snapshot = stream.next_event()
            assert name == "snapshot"
            series = snapshot.pop("series")
            assert snapshot == {
                "total": 0,
                "paths": {},
                "duplicates": 0,
                "rejected": 0,
                "abandoned": 0,
                "in_flight": 0,
                "subscribers": 1,
                "rate": 0.0,
                "mode": "asyncbridge",
                "recent": [],
            }
            assert all((p["requests"], p["pushes"]) == (0, 0) for p in series), series
            body = json.dumps({"id": "a-1", "path": "/pricing"}).encode()
            json_type = {"Content-Type": "application/json"}
            forged = {
                "unsigned": {},
                "wrong secret": {HEADER: _signature("not-the-secret", body)},
                "no sha256= prefix": {HEADER: _signature(secret, body)[len("sha256=") :]},
                "empty": {HEADER: ""},
            }
            for what, headers in forged.items():
                status, answer = _request(port, "POST", "/events", body, {**json_type, **headers})
                assert status == 401, (what, answer)
            tampered = body.replace(b"/pricing", b"/signup")
            status, _ = _request(
                port, "POST", "/events", tampered, {**json_type, HEADER: _signature(secret, body)}
            )
            assert status == 401
            assert _counts(port)["total"] == 0

            status, answer = _request(
                port, "POST", "/events", body, {**json_type, HEADER: _signature(secret, body)}
            )
            assert status == 202, answer
            name, hit = stream.next_event()
            assert name == "hit"
            assert (hit["id"], hit["path"], hit["count"], hit["total"]) == ("a-1", "/pricing", 1, 1)
            counts = _counts(port)
            assert (counts["total"], counts["paths"], counts["rejected"]) == (1, {"/pricing": 1}, 5)
            assert counts["duplicates"] == 0

            # A replayed event is still validly signed: counted, and flagged as a duplicate.
            status, _ = _request(
                port, "POST", "/events", body, {**json_type, HEADER: _signature(secret, body)}
            )
            assert status == 202
            assert stream.next_event()[1]["total"] == 2
            counts = _counts(port)
            assert (counts["total"], counts["duplicates"]) == (2, 1)
        finally:
            stream.close()
        hub.signal(signal.SIGTERM)
        assert hub.wait(15) == 0
        output = hub.output()
    assert output.count("missing or bad signature") == 5
    assert secret not in output


def test_demo_counts_every_hit_and_stops_cleanly_on_sigint(tmp_path: Path) -> None:
    secret = _secret()
    server, hub_port, app_port = _start_demo(tmp_path, secret)
    try:
        wait_http(f"http://127.0.0.1:{hub_port}/api/counts", 20, server.proc, server.output)
        wait_http(f"http://127.0.0.1:{app_port}/stats", 30, server.proc, server.output)
        # Nothing listens beyond loopback: 0100007F is 127.0.0.1 in /proc/net/tcp.
        assert _listening_addresses(hub_port) == {"0100007F"}
        assert _listening_addresses(app_port) == {"0100007F"}

        sent: collections.Counter[str] = collections.Counter()
        for i in range(36):
            path = ("/pricing", "/docs", "/")[i % 3]
            status, body = _request(app_port, "POST", f"/track?path={path}")
            assert (status, json.loads(body)) == (202, {"queued": True})
            sent[path] += 1
        for _ in range(4):  # a page of the site tracks itself
            status, _ = _request(app_port, "GET", "/signup")
            assert status == 200
            sent["/signup"] += 1

        assert wait_until(lambda: _counts(hub_port)["total"] == 40, timeout=15)
        counts = _counts(hub_port)
        assert counts["paths"] == dict(sent)
        assert (counts["duplicates"], counts["rejected"], counts["abandoned"]) == (0, 0, 0)

        server.signal(signal.SIGINT)  # only demo.run: it stops gunicorn, then the hub
        assert server.wait(45) == 0
        output = server.output()
    finally:
        server.stop()

    assert "SIGINT received: stopping" in output
    reports = _reports(output)
    assert reports, output[-3000:]
    assert sum(r[1] for r in reports) == 40  # accepted
    assert sum(r[2] for r in reports) == 40  # completed
    assert all(r[3:] == (0, 0, 0, 0, 0) for r in reports), reports
    assert "hub: 40 hits received" in output
    assert "demo stopped cleanly" in output
    assert secret not in output


def test_sigint_to_demo_runs_process_group_reaches_only_demo_run(tmp_path: Path) -> None:
    # As a terminal's Ctrl-C does (see test_demo_ctrl_c.py for the real thing). The servers run
    # in sessions of their own: the workers get only the master's SIGTERM, and drain.
    secret = _secret()
    server, hub_port, app_port = _start_demo(tmp_path, secret, "--workers", "1")
    try:
        _track(server, hub_port, app_port, "/blog", 25)
        os.killpg(server.pid, signal.SIGINT)
        assert server.wait(45) == 0
        output = server.output()
    finally:
        server.stop()
    _assert_drained_and_stopped(output, secret, "/blog", 25)
    assert "asyncbridge: SIGINT/SIGQUIT in worker" not in output


def _track(server: Server, hub_port: int, app_port: int, path: str, n: int) -> None:
    """Wait for the hub and the app, then track ``n`` hits of ``path``, each answered 202."""
    wait_http(f"http://127.0.0.1:{hub_port}/api/counts", 20, server.proc, server.output)
    wait_http(f"http://127.0.0.1:{app_port}/stats", 30, server.proc, server.output)
    for _ in range(n):
        status, _ = _request(app_port, "POST", f"/track?path={path}")
        assert status == 202


def _assert_drained_and_stopped(output: str, secret: str, path: str, n: int) -> None:
    """One worker's report shows every hit completed, the hub got them all, no secret leaked."""
    reports = _reports(output)
    assert len(reports) == 1, output[-3000:]
    assert reports[0][1:] == (n, n, 0, 0, 0, 0, 0)
    assert (
        f"hub: {n} hits received ({path}={n}); 0 rejected, 0 duplicates,"
        " 0 abandoned by their sender\n" in output
    )
    assert "demo stopped cleanly" in output
    assert secret not in output


def test_demo_sigint_drains_pushes_still_in_flight_to_the_hub(tmp_path: Path) -> None:
    secret = _secret()
    server, hub_port, app_port = _start_demo(tmp_path, secret, "--workers", "1", "--hub-delay", "2")
    try:
        _track(server, hub_port, app_port, "/docs", 30)
        status, body = _request(app_port, "GET", "/stats")
        assert status == 200
        in_flight = json.loads(body)
        assert in_flight["accepted"] == 30
        assert in_flight["pending"] + in_flight["running"] >= 1  # the hub holds each for 2 s

        server.signal(signal.SIGINT)
        assert server.wait(45) == 0
        output = server.output()
    finally:
        server.stop()
    _assert_drained_and_stopped(output, secret, "/docs", 30)


def test_hub_counts_an_event_whose_sender_left_as_abandoned_not_received(tmp_path: Path) -> None:
    # As tests/e2e/sink.py's Sink: a push counts as delivered only if its sender is still
    # connected when the answer goes out.
    secret = _secret()
    port = free_port()
    argv = [PYTHON, "-m", "demo.hub", "--port", str(port), "--delay", "1"]
    with running(argv, log=tmp_path / "hub.log", env={"DEMO_SECRET": secret}) as hub:
        wait_http(f"http://127.0.0.1:{port}/api/counts", 15, hub.proc)
        stream = _EventStream(port)
        try:
            assert stream.next_event()[0] == "snapshot"
            gone = json.dumps({"id": "gone-1", "path": "/gone"}).encode()
            headers = {"Content-Type": "application/json", HEADER: _signature(secret, gone)}
            leaving = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            leaving.request("POST", "/events", body=gone, headers=headers)
            assert wait_until(lambda: _counts(port)["in_flight"] == 1, timeout=10)
            leaving.close()  # before the hub answers

            kept = json.dumps({"id": "kept-1", "path": "/kept"}).encode()
            headers = {"Content-Type": "application/json", HEADER: _signature(secret, kept)}
            assert _request(port, "POST", "/events", kept, headers)[0] == 202
            assert wait_until(lambda: _counts(port)["in_flight"] == 0, timeout=10)
            name, hit = stream.next_event()
            assert (name, hit["id"], hit["total"]) == ("hit", "kept-1", 1)
            counts = _counts(port)
            assert (counts["total"], counts["paths"], counts["abandoned"]) == (1, {"/kept": 1}, 1)
            assert (counts["duplicates"], counts["rejected"]) == (0, 0)
        finally:
            stream.close()
        hub.signal(signal.SIGTERM)
        assert hub.wait(15) == 0
        output = hub.output()
    assert "hub stopping: 1 events accepted (0 duplicates), 0 rejected, 1 abandoned" in output


def test_demo_counts_pushes_cancelled_at_the_drain_deadline_as_abandoned(tmp_path: Path) -> None:
    # The hub holds each push 10 s; the worker's drain deadline is 1 s, so its drain cancels the
    # 5 pushes in flight and closes their connections. The hub answers them later, to no one.
    secret = _secret()
    server, hub_port, app_port = _start_demo(
        tmp_path, secret, "--workers", "1", "--hub-delay", "10", ASYNCBRIDGE_DRAIN_TIMEOUT="1"
    )
    try:
        _track(server, hub_port, app_port, "/late", 5)
        assert wait_until(lambda: _counts(hub_port)["in_flight"] == 5, timeout=15)
        server.signal(signal.SIGINT)
        assert server.wait(45) == 1
        output = server.output()
    finally:
        server.stop()
    (report,) = _reports(output)
    assert report[1:] == (5, 0, 0, 0, 5, 0, 0)  # accepted 5, cancelled 5
    assert "hub: 0 hits received (none); 0 rejected, 0 duplicates, 5 abandoned by" in output
    assert "NOT OK: 5 hits reached the hub after their sender had gone" in output
    assert output.rstrip().endswith("demo stopped with errors")


def test_demo_non_interactive_mode_sends_traffic_and_exits_zero(tmp_path: Path) -> None:
    secret = _secret()
    server, _, _ = _start_demo(
        tmp_path, secret, "--traffic", "50", "--rate", "0", "--exit-after", "0.2"
    )
    try:
        assert server.wait(60) == 0
        output = server.output()
    finally:
        server.stop()
    assert "traffic: 50 sent, 50 accepted by the app, 0 failed" in output
    assert "hub: 50 hits received" in output
    reports = _reports(output)
    assert sum(r[1] for r in reports) == 50
    assert sum(r[2] for r in reports) == 50
    assert "dashboard:     http://127.0.0.1:" in output
    assert "curl -X POST 'http://127.0.0.1:" in output
    assert "demo stopped cleanly" in output
    assert secret not in output


def _booted(output: str) -> list[int]:
    return [int(pid) for pid in re.findall(r"Booting worker with pid: (\d+)", output)]


def _has_worker_handlers(pid: int) -> bool:
    """Has gunicorn worker ``pid`` installed its own signal handlers (its SigCgt in /proc)?

    gunicorn logs "Booting worker" before the worker installs them, and until then the worker
    runs the master's handlers, inherited through the fork: a SIGQUIT in between is queued for
    a master loop that never runs there, and the worker lives on until gunicorn SIGKILLs it,
    with no hook and no report. SIGQUIT is caught all along, so it tells nothing; SIGABRT is
    caught only once ``Worker.init_signals`` has run (it sets SIGABRT after SIGQUIT), and the
    master does not catch it.
    """
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    mask = re.search(r"^SigCgt:\s*([0-9a-f]+)$", status, re.M)
    return mask is not None and bool(int(mask.group(1), 16) >> (signal.SIGABRT - 1) & 1)


def test_summary_says_why_requests_failed(tmp_path: Path) -> None:
    # A backlog of 3 and a hub that holds each push 4 s: of 10 hits sent at once, the first 3
    # are accepted and 7 refused (answered 202 with queued=false).
    secret = _secret()
    server, _, app_port = _start_demo(
        tmp_path,
        secret,
        *("--workers", "1", "--hub-delay", "4", "--traffic", "10", "--rate", "0"),
        *("--exit-after", "0.2"),
        ASYNCBRIDGE_MAX_PENDING="3",
    )
    try:
        assert server.wait(60) == 1
        output = server.output()
    finally:
        server.stop()
    assert "traffic: 10 sent, 3 accepted by the app, 7 failed" in output
    why = "answered 202 but not queued (asyncbridge's backlog full, or it was stopping)"
    assert (
        f"NOT OK: 7 requests failed: 7 {why} (POST http://127.0.0.1:{app_port}/track); " in output
    )
    assert "hub: 3 hits received" in output
    assert "accepted hits did not reach the hub" not in output  # none: all 3 did
    (report,) = _reports(output)
    assert report[1:] == (3, 3, 0, 0, 0, 7, 0)
    assert output.rstrip().endswith("demo stopped with errors")


def test_summary_flags_a_worker_that_logged_no_report(tmp_path: Path) -> None:
    secret = _secret()
    server, hub_port, app_port = _start_demo(tmp_path, secret)
    try:
        _track(server, hub_port, app_port, "/pricing", 10)
        assert wait_until(lambda: _counts(hub_port)["total"] == 10, timeout=15)
        first, second = _booted(server.output())
        os.kill(first, signal.SIGKILL)  # nothing runs: no drain, no report
        assert wait_until(lambda: len(_booted(server.output())) == 3, timeout=30)
        replacement = _booted(server.output())[2]
        # gunicorn's SIGINT sends the workers SIGQUIT: wait until the replacement handles it.
        assert wait_until(lambda: _has_worker_handlers(replacement), timeout=30)
        server.signal(signal.SIGINT)
        assert server.wait(45) == 1
        output = server.output()
    finally:
        server.stop()
    assert f"NOT OK: worker {first} logged no drain report" in output
    assert sorted(r[0] for r in _reports(output)) == sorted([second, replacement])
    assert "hub: 10 hits received" in output
    assert output.rstrip().endswith("demo stopped with errors")


def test_servers_stop_by_themselves_when_demo_run_is_killed(tmp_path: Path) -> None:
    # They are out of reach of demo.run's process group; each watches its parent instead.
    secret = _secret()
    server, hub_port, app_port = _start_demo(tmp_path, secret)
    try:
        _track(server, hub_port, app_port, "/docs", 5)
        pids = server_pids(server.output())
        assert len(pids) == 4  # the hub, gunicorn's master, two workers
        os.kill(server.pid, signal.SIGKILL)
        assert server.wait(10) == -signal.SIGKILL
        assert wait_until(lambda: not any(_alive(pid) for pid in pids), timeout=30), [
            pid for pid in pids if _alive(pid)
        ]
    finally:
        server.stop()


def _alive(pid: int) -> bool:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return False
    return fields[0] != "Z"  # a zombie has exited; its parent (init) reaps it


def test_traffic_names_the_reason_and_the_address_of_failed_requests() -> None:
    from demo.traffic import send_hits

    port = free_port()  # nothing listens there
    result = send_hits(f"http://127.0.0.1:{port}", 6, connections=2)
    assert (result.sent, result.accepted, result.failed) == (6, 0, 6)
    assert result.errors == {f"connection refused (POST http://127.0.0.1:{port}/track)": 6}
    assert result.describe_errors().startswith(
        f"6 connection refused (POST http://127.0.0.1:{port}/track); "
    )


def test_hub_plots_request_times_and_arrival_delays_per_second(tmp_path: Path) -> None:
    secret = _secret()
    port = free_port()
    mode_file = tmp_path / "mode"
    argv = [PYTHON, "-m", "demo.hub", "--port", str(port), "--mode-file", str(mode_file)]
    with running(argv, log=tmp_path / "hub.log", env={"DEMO_SECRET": secret}) as hub:
        wait_http(f"http://127.0.0.1:{port}/api/counts", 15, hub.proc)
        assert mode_file.read_text() == "asyncbridge\n"
        stream = _EventStream(port)
        try:
            assert stream.next_event()[0] == "snapshot"
            second = int(time.time())
            # 100 requests that took 1..100 ms, reported the way the app does, signed.
            samples = [[second + 0.5, float(ms), "inline"] for ms in range(100, 0, -1)]
            body = json.dumps({"pid": 1, "samples": samples}).encode()
            json_type = {"Content-Type": "application/json"}
            status, _ = _request(port, "POST", "/metrics", body, json_type)
            assert status == 401
            status, _ = _request(
                port, "POST", "/metrics", body, {**json_type, HEADER: _signature(secret, body)}
            )
            assert status == 202
            # 4 pushes handed off 0.25 s before they are sent.
            for i in range(4):
                event = {"id": f"p-{i}", "path": "/", "at": time.time() - 0.25}
                data = json.dumps(event).encode()
                headers = {**json_type, HEADER: _signature(secret, data)}
                assert _request(port, "POST", "/events", data, headers)[0] == 202
            points: list[dict[str, Any]] = []
            while not points or points[-1]["t"] < second + 1:
                name, tick = stream.next_event(skip=("hit",))
                assert name == "tick"
                if tick["point"]["t"] >= second:  # plotted after the 4 hits were sent
                    assert tick["rate"] == 0.4  # 4 hits in the last 10 s
                points.append(tick["point"])
            (point,) = [p for p in points if p["t"] == second]
            assert (point["requests"], point["req_p50"], point["req_p99"]) == (100, 50.0, 99.0)
            assert point["mode"] == "inline"
            plotted = [p for p in points if p["pushes"]]
            assert sum(p["pushes"] for p in plotted) == 4
            assert all(p["arr_p50"] >= 250 and p["arr_p99"] >= 250 for p in plotted), plotted
            status, series = _request(port, "GET", "/api/series")
            assert [p for p in json.loads(series) if p["t"] >= second] == [
                p for p in points if p["t"] >= second
            ]

            # The switch: JSON only, a known mode only; it writes the file and tells browsers.
            assert _request(port, "POST", "/api/mode", b"mode=inline")[0] == 415
            bad = json.dumps({"mode": "threads"}).encode()
            assert _request(port, "POST", "/api/mode", bad, json_type)[0] == 400
            good = json.dumps({"mode": "inline"}).encode()
            status, answer = _request(port, "POST", "/api/mode", good, json_type)
            assert (status, json.loads(answer)) == (200, {"mode": "inline"})
            assert mode_file.read_text() == "inline\n"
            assert stream.next_event(skip=("tick", "hit")) == ("mode", {"mode": "inline"})
            assert json.loads(_request(port, "GET", "/api/mode")[1]) == {"mode": "inline"}
            assert _counts(port)["mode"] == "inline"
        finally:
            stream.close()
        hub.signal(signal.SIGTERM)
        assert hub.wait(15) == 0
        assert secret not in hub.output()
