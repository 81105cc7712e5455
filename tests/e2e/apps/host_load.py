"""The load, the reports and the zero-loss check shared by the web host tests.

The hosts serve tests/e2e/apps/hosts_app.py. Each test sends requests to ``/notify`` (each one
answers the id of the notification it handed over), ends the load with a burst while the sink
is slow, stops the host the way its users do, and then compares three counts that must agree:
what the clients were told was accepted, what each process's own shutdown report says it
accepted and completed, and what the sink received (from senders still connected when the
answer went out), with no duplicates.
"""

from __future__ import annotations

import http.client
import importlib.util
import json
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from ..procs import http_get
from ..sink import Sink, wait_until

__all__ = ["Load", "not_installed", "reports", "skip_unless_ready", "summary", "wait_reports"]

_RETRYABLE = (ConnectionResetError, ConnectionRefusedError, http.client.RemoteDisconnected)


@dataclass
class Load:
    """The answers a test's clients got, and how many requests had to be retried."""

    base: str
    hold: float = 0.0  # seconds each request holds its worker (see hosts_app)
    answers: list[dict[str, Any]] = field(default_factory=list)
    retries: int = 0
    unavailable: int = 0  # 503 answers retried: the host had no worker to hand them to

    def fire(self, n: int, threads: int = 4, *, retry: bool = False) -> None:
        """Send ``n`` notify requests; each must be answered 200.

        Args:
            n: How many requests.
            threads: Client threads.
            retry: Retry a request whose connection was reset or refused (a host respawning
                its workers may drop a connection), as a real client would. Whether such a
                request reached a worker is unknowable, so the workers' reports then count.
                Also retry a 503 (mod_wsgi while its daemons restart): it never reached the app.
        """

        def one(_: int) -> tuple[dict[str, Any], int, int]:
            retries = unavailable = 0
            for _attempt in range(200):
                try:
                    status, body = http_get(f"{self.base}/notify?hold={self.hold}", timeout=30)
                except _RETRYABLE:
                    if not retry:
                        raise
                    retries += 1
                    time.sleep(0.05)
                    continue
                if status == 503 and retry:
                    unavailable += 1
                    time.sleep(0.05)
                    continue
                assert status == 200, body
                answer: dict[str, Any] = json.loads(body)
                return answer, retries, unavailable
            raise AssertionError(f"no answer from {self.base} within 200 attempts")

        with ThreadPoolExecutor(threads) as pool:
            for answer, retries, unavailable in pool.map(one, range(n)):
                self.answers.append(answer)
                self.retries += retries
                self.unavailable += unavailable

    def interleavings(self) -> int:
        """How often the answers came back to an earlier process after another one's.

        Above 0, at least two processes served requests at the same time.
        """
        seen: set[int] = set()
        previous, count = None, 0
        for a in self.answers:
            pid = int(a["pid"])
            if pid != previous and pid in seen:
                count += 1
            seen.add(pid)
            previous = pid
        return count

    @property
    def accepted_ids(self) -> set[str]:
        return {a["id"] for a in self.answers if a["accepted"]}

    @property
    def pids(self) -> set[int]:
        return {int(a["pid"]) for a in self.answers}

    def check(self, sink: Sink, workers: dict[int, dict[str, Any]]) -> dict[str, int]:
        """Assert zero loss and no duplicates; return the figures.

        Args:
            sink: The sink the app posted to.
            workers: Every process's shutdown report, by PID (see :func:`reports`).

        Returns:
            ``requests``, ``accepted`` (by the workers, from their reports), ``received`` and
            ``lost`` (accepted minus received), ``workers``, ``retries``.
        """
        assert len(self.answers) == len({a["id"] for a in self.answers}), "duplicate answers"
        refused = [a for a in self.answers if not a["accepted"]]
        assert not refused, (
            f"{len(refused)} request(s) refused by the bridge: {refused[:5]}; the reports of "
            f"those processes: {[workers.get(int(a['pid'])) for a in refused[:2]]}"
        )
        # Every process that answered a request drained and reported.
        assert self.pids <= set(workers), f"no report from {sorted(self.pids - set(workers))}"
        accepted = sum(int(w["accepted"]) for w in workers.values())
        if self.retries == 0:
            assert accepted == len(self.answers)
        else:
            assert len(self.answers) <= accepted <= len(self.answers) + self.retries
        for pid, w in workers.items():
            assert w["completed"] == w["accepted"], (pid, w)
            assert w["failed"] == w["cancelled"] == w["timed_out"] == w["abandoned"] == 0, w
        assert sink.duplicates() == 0
        assert sink.received == accepted, (
            f"the workers accepted {accepted}, the sink received {sink.received} "
            f"({sum(sink.abandoned.values())} abandoned by their senders)"
        )
        assert self.accepted_ids <= set(sink.ids)
        return {
            "requests": len(self.answers),
            "accepted": accepted,
            "received": sink.received,
            "lost": accepted - sink.received,
            "workers": len(workers),
            "retries": self.retries,
            "unavailable": self.unavailable,
        }


def not_installed(package: str, *paths: Path) -> str | None:
    """Why a host from the package index cannot run here, or ``None`` where it can.

    Args:
        package: The importable name (``granian``, ``waitress``).
        paths: Files the host needs as well (its command in this virtualenv).
    """
    if importlib.util.find_spec(package) is None or not all(p.exists() for p in paths):
        return f"{package} is not installed (the `hosts` dependency group in pyproject.toml)"
    return None


def skip_unless_ready(test: str, reason: str | None) -> None:
    """Skip a host's tests where ``reason`` says what is missing, printing it as ``SKIP test: ...``.

    Args:
        test: The test module's name, for the printed line.
        reason: Why the host cannot run here, or ``None`` where it can.
    """
    if reason:
        print(f"SKIP {test}: {reason}")
        pytest.skip(reason)


def reports(out: Path) -> dict[int, dict[str, Any]]:
    """The shutdown reports written by hosts_app, by PID."""
    found: dict[int, dict[str, Any]] = {}
    for path in sorted(out.glob("report-*.json")):
        data: dict[str, Any] = json.loads(path.read_text())
        found[int(data["pid"])] = data
    return found


def wait_reports(out: Path, pids: Iterable[int], timeout: float) -> dict[int, dict[str, Any]]:
    """Wait until each of ``pids`` wrote its report; return every report found then."""
    wanted = set(pids)
    wait_until(lambda: wanted <= set(reports(out)), timeout, interval=0.1)
    return reports(out)


def summary(host: str, figures: dict[str, int], **extra: object) -> str:
    """One line of figures for the test output (run pytest with ``-s`` to see it)."""
    parts = [f"{k}={v}" for k, v in {**figures, **extra}.items()]
    line = f"[{host}] " + " ".join(parts)
    print(line, flush=True)
    return line
