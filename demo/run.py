"""Start the live-analytics demo: the push hub, and the Flask app under gunicorn, on 127.0.0.1.

``./scripts/demo`` runs this module. It prints the dashboard URL and how to make traffic, and
stops everything on Ctrl-C: gunicorn first, so that each worker drains its pending pushes to the
hub (asyncbridge logs a drain report per worker), then the hub. With ``--exit-after`` it stops by
itself, for CI, and exits 0 only when every accepted hit reached the hub.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import FrameType
from typing import IO, Any

from .signing import secret_source
from .traffic import Result, send_hits

__all__ = ["main"]

ROOT = Path(__file__).resolve().parents[1]
REPORT = re.compile(r"asyncbridge shutdown of pid (\d+) .*")
logger = logging.getLogger("demo.run")


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _client_host(host: str) -> str:
    return "127.0.0.1" if host in ("", "0.0.0.0") else host


def _get_json(url: str, timeout: float = 2.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.loads(response.read())


def _wait_ready(
    url: str, proc: subprocess.Popen[bytes], what: str, timeout: float, stop: threading.Event
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with status {proc.returncode} while starting")
        if stop.is_set():
            raise RuntimeError(f"stopped while waiting for {what} to start")
        try:
            _get_json(url, timeout=1.0)
            return
        except (OSError, ValueError):
            time.sleep(0.1)
    raise RuntimeError(f"{what} did not answer {url} within {timeout:g}s")


def _forward(stream: IO[bytes], reports: dict[int, str]) -> None:
    """Copy gunicorn's log to ours, keeping the asyncbridge drain reports for the summary."""
    for raw in stream:
        line = raw.decode(errors="replace")
        sys.stderr.write(line)
        sys.stderr.flush()
        found = REPORT.search(line)
        if found:  # one per worker, even if it is logged twice (a report that is not clean)
            reports.setdefault(int(found.group(1)), found.group(0))
    stream.close()


def _stop(proc: subprocess.Popen[bytes], what: str, timeout: float) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        logger.error("%s did not stop within %gs; killing it", what, timeout)
        proc.kill()
        return proc.wait(10)


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="./scripts/demo",
        description=(__doc__ or "").replace("``", ""),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--host", default="127.0.0.1", help="address the hub and the app bind (default 127.0.0.1)"
    )
    parser.add_argument("--hub-port", type=int, default=0, help="hub/dashboard port (0: free)")
    parser.add_argument("--app-port", type=int, default=0, help="app port (0: free)")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers (default 2)")
    parser.add_argument(
        "--traffic", type=int, default=0, metavar="N", help="send N tracked hits once started"
    )
    parser.add_argument(
        "--rate", type=float, default=20.0, help="hits per second for --traffic (0: no limit)"
    )
    parser.add_argument(
        "--hub-delay",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="make the hub this slow to accept each push, to watch Ctrl-C drain work in flight",
    )
    parser.add_argument(
        "--exit-after",
        type=float,
        default=None,
        metavar="SECONDS",
        help="stop by itself this long after the traffic is sent (non-interactive, for CI)",
    )
    return parser.parse_args(argv)


class _Demo:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.stopping = threading.Event()
        self.interrupts = 0
        self.hub: subprocess.Popen[bytes] | None = None
        self.gunicorn: subprocess.Popen[bytes] | None = None
        self.reports: dict[int, str] = {}
        self.forwarder: threading.Thread | None = None
        self.traffic: Result | None = None
        self.traffic_done = threading.Event()
        self.traffic_thread: threading.Thread | None = None
        self.up = False

    def on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.interrupts += 1
        if self.interrupts == 1:
            logger.info("%s received: stopping (again to force)", signal.Signals(signum).name)
            self.stopping.set()
        else:
            logger.warning("forced stop: killing the hub and gunicorn without draining")
            for proc in (self.gunicorn, self.hub):
                if proc is not None and proc.poll() is None:
                    proc.kill()
            os._exit(130)

    def start(self) -> tuple[str, str]:
        a = self.args
        client = _client_host(a.host)
        hub_port = a.hub_port or _free_port(a.host)
        app_port = a.app_port or _free_port(a.host)
        hub_url = f"http://{client}:{hub_port}"
        app_url = f"http://{client}:{app_port}"
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
        env["PYTHONUNBUFFERED"] = "1"
        hub_argv = ["-m", "demo.hub", "--managed", "--host", a.host, "--port", str(hub_port)]
        hub_argv += ["--delay", str(a.hub_delay)]
        self.hub = subprocess.Popen(
            [sys.executable, *hub_argv],
            cwd=ROOT,
            env=env,
        )
        _wait_ready(f"{hub_url}/api/counts", self.hub, "the hub", 20, self.stopping)
        env.update(
            DEMO_APP_BIND=f"{a.host}:{app_port}", DEMO_HUB_URL=hub_url, DEMO_WORKERS=str(a.workers)
        )
        self.gunicorn = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", "demo/gunicorn.conf.py"],
            cwd=ROOT,
            env=env,
            stderr=subprocess.PIPE,
        )
        assert self.gunicorn.stderr is not None
        self.forwarder = threading.Thread(
            target=_forward, args=(self.gunicorn.stderr, self.reports), daemon=True
        )
        self.forwarder.start()
        _wait_ready(f"{app_url}/stats", self.gunicorn, "gunicorn", 30, self.stopping)
        return hub_url, app_url

    def banner(self, hub_url: str, app_url: str) -> None:
        python = Path(sys.executable)
        if python.is_relative_to(Path.cwd()):
            python = python.relative_to(Path.cwd())
        lines = [
            "",
            "asyncbridge live-analytics demo is running",
            f"  dashboard:     {hub_url}/",
            f"  the app:       {app_url}/   (every page view is tracked)",
            f"  track a hit:   curl -X POST '{app_url}/track?path=/pricing'",
            f"  more traffic:  {python} -m demo.traffic --url {app_url} -n 200",
            f"  shared secret: from {secret_source()}",
            "  Ctrl-C stops gunicorn (each worker logs its asyncbridge drain report),",
            "  then the hub.",
            "",
        ]
        print("\n".join(lines), flush=True)

    def send_traffic(self, app_url: str) -> None:
        a = self.args

        def progress(r: Result) -> None:
            logger.info("traffic: %d/%d sent", r.sent, a.traffic)

        try:
            self.traffic = send_hits(
                app_url, a.traffic, rate=a.rate, stop=self.stopping, progress=progress
            )
            r = self.traffic
            logger.info(
                "traffic: %d hits sent in %.1fs, %d accepted by the app, %d failed",
                r.sent,
                r.elapsed,
                r.accepted,
                r.failed,
            )
        finally:
            self.traffic_done.set()

    def wait(self) -> bool:
        """Wait for Ctrl-C, --exit-after, or a server dying; True when a server died."""
        a = self.args
        exit_at: float | None = None
        while not self.stopping.is_set():
            for proc, what in ((self.hub, "the hub"), (self.gunicorn, "gunicorn")):
                if proc is not None and proc.poll() is not None:
                    logger.error("%s exited unexpectedly with status %d", what, proc.returncode)
                    return True
            if a.exit_after is not None and self.traffic_done.is_set():
                if exit_at is None:
                    exit_at = time.monotonic() + a.exit_after
                elif time.monotonic() >= exit_at:
                    logger.info("--exit-after %gs reached: stopping", a.exit_after)
                    break
            self.stopping.wait(0.1)
        return False

    def stop(self, hub_url: str | None) -> dict[str, Any] | None:
        self.stopping.set()
        if self.gunicorn is not None:
            logger.info("stopping gunicorn: its workers drain their pending pushes to the hub")
            status = _stop(self.gunicorn, "gunicorn", 10 + 15)
            if self.forwarder is not None:
                self.forwarder.join(5)
        if self.traffic_thread is not None:
            self.traffic_thread.join(15)
            if status != 0:
                logger.error("gunicorn exited with status %d", status)
        counts = None
        if self.hub is not None and hub_url is not None and self.hub.poll() is None:
            try:
                counts = _get_json(f"{hub_url}/api/counts")
            except (OSError, ValueError) as exc:
                logger.error("could not read the hub's counts: %s", exc)
        if self.hub is not None:
            _stop(self.hub, "the hub", 10)
        return counts

    def summary(self, counts: dict[str, Any] | None, died: bool) -> int:
        if not self.up and not died:
            print("demo stopped before it was up", flush=True)
            return 0
        ok = not died and counts is not None
        print("\nasyncbridge drain reports (one per gunicorn worker):")
        for report in list(self.reports.values()) or ["(none found in gunicorn's log)"]:
            print(f"  {report}")
        if counts is not None:
            paths = ", ".join(f"{p}={n}" for p, n in sorted(counts["paths"].items()))
            print(
                f"hub: {counts['total']} hits received ({paths or 'none'}); "
                f"{counts['rejected']} rejected, {counts['duplicates']} duplicates"
            )
        r = self.traffic
        if r is not None:
            print(f"traffic: {r.sent} sent, {r.accepted} accepted by the app, {r.failed} failed")
            lost = r.accepted - (counts["total"] if counts else 0)
            if r.failed or lost > 0:
                print(f"NOT OK: {max(lost, 0)} accepted hits did not reach the hub")
                ok = False
        unclean = ("abandoned=", "cancelled at the deadline")
        if any(word in line for line in self.reports.values() for word in unclean):
            ok = False
        print("demo stopped cleanly" if ok else "demo stopped with errors", flush=True)
        return 0 if ok else 1


def main(argv: list[str] | None = None) -> None:
    """Command line: see ``python -m demo.run --help``."""
    args = _parse(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s [demo] %(message)s")
    demo = _Demo(args)
    signal.signal(signal.SIGINT, demo.on_signal)
    signal.signal(signal.SIGTERM, demo.on_signal)
    hub_url: str | None = None
    died = False
    try:
        hub_url, app_url = demo.start()
        demo.banner(hub_url, app_url)
        demo.up = True
        if args.traffic > 0:
            demo.traffic_thread = threading.Thread(
                target=demo.send_traffic, args=(app_url,), daemon=True
            )
            demo.traffic_thread.start()
        else:
            demo.traffic_done.set()
        died = demo.wait()
    except RuntimeError as exc:
        # Ctrl-C while the servers start is a normal way out, not a failure.
        died = not demo.stopping.is_set()
        (logger.error if died else logger.info)("%s", exc)
    counts = demo.stop(hub_url)
    raise SystemExit(demo.summary(counts, died))


if __name__ == "__main__":
    main()
