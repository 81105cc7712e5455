"""The live-analytics demo, end to end without a browser: the real hub, gunicorn and demo.run."""

from __future__ import annotations

import collections
import hashlib
import hmac
import http.client
import json
import os
import re
import signal
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


def _start_demo(tmp_path: Path, secret: str, *extra: str) -> tuple[Server, int, int]:
    hub_port, app_port = free_port(), free_port()
    argv = [PYTHON, "-m", "demo.run", "--hub-port", str(hub_port), "--app-port", str(app_port)]
    server = Server([*argv, *extra], log=tmp_path / "demo.log", env={"DEMO_SECRET": secret})
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
        wait_http(f"http://127.0.0.1:{hub_port}/api/counts", 20, server.proc)
        wait_http(f"http://127.0.0.1:{app_port}/stats", 30, server.proc)
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
        assert (counts["duplicates"], counts["rejected"]) == (0, 0)

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


def test_demo_stops_cleanly_when_ctrl_c_reaches_the_whole_process_group(tmp_path: Path) -> None:
    # A terminal's Ctrl-C signals every process in the foreground group: the hub must outlive
    # gunicorn's workers, whose drains still push to it.
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


def _track(server: Server, hub_port: int, app_port: int, path: str, n: int) -> None:
    """Wait for the hub and the app, then track ``n`` hits of ``path``, each answered 202."""
    wait_http(f"http://127.0.0.1:{hub_port}/api/counts", 20, server.proc)
    wait_http(f"http://127.0.0.1:{app_port}/stats", 30, server.proc)
    for _ in range(n):
        status, _ = _request(app_port, "POST", f"/track?path={path}")
        assert status == 202


def _assert_drained_and_stopped(output: str, secret: str, path: str, n: int) -> None:
    """One worker's report shows every hit completed, the hub got them all, no secret leaked."""
    reports = _reports(output)
    assert len(reports) == 1, output[-3000:]
    assert reports[0][1:] == (n, n, 0, 0, 0, 0, 0)
    assert f"hub: {n} hits received ({path}={n})" in output
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
