"""Start the live-analytics demo: the push hub, and the Flask app under gunicorn, on 127.0.0.1.

``./scripts/demo`` runs this module. It prints the dashboard URL and how to make traffic, and
stops everything on Ctrl-C: the traffic first, then gunicorn, gracefully, so that each worker
drains its pending pushes to the hub and logs its drain report, then the hub. The servers run in
sessions of their own, so a terminal's Ctrl-C reaches only this runner, which turns it into that
graceful stop. With ``--exit-after`` it stops by itself, for CI, and exits 0 only when every
accepted hit reached the hub and every worker reported a clean drain.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import IO, Any, TextIO

from .mode import DEFAULT, MODES
from .signing import secret_source
from .traffic import Result, send_hits

__all__ = ["main"]

ROOT = Path(__file__).resolve().parents[1]
REPORT = re.compile(r"asyncbridge shutdown of pid (\d+) .*")
BOOTED = re.compile(r"Booting worker with pid: (\d+)")
logger = logging.getLogger("demo.run")


class _Output:
    """The demo's output: the terminal, and with ``--log`` a file as well, line by line.

    Every line is flushed at once, also when stdout is a pipe. When the terminal goes away (a
    ``tee`` that died of the same Ctrl-C, a closed window), the file still gets everything.
    """

    def __init__(self, log: Path | None) -> None:
        self._lock = threading.Lock()
        self._file: TextIO | None = open(log, "a", encoding="utf-8") if log else None
        self.terminal_lost = False

    def write(self, text: str, stream: TextIO) -> None:
        with self._lock:
            if self._file is not None:
                self._file.write(text)
                self._file.flush()
            if self.terminal_lost:
                return
            try:
                stream.write(text)
                stream.flush()
            except (OSError, ValueError):  # EPIPE, EIO; or a closed stream
                self.terminal_lost = True
                _silence(sys.stdout, sys.stderr)

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None


def _silence(*streams: TextIO) -> None:
    """Point broken terminal streams at /dev/null, so that the exit's final flush cannot fail."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    for stream in streams:
        with contextlib.suppress(OSError, ValueError):
            os.dup2(devnull, stream.fileno())
    os.close(devnull)


class _OutputHandler(logging.Handler):
    def __init__(self, output: _Output) -> None:
        super().__init__()
        self.output = output

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.output.write(self.format(record) + "\n", sys.stderr)
        except Exception:
            self.handleError(record)


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


def _forward(stream: IO[bytes], output: _Output, on_line: Callable[[str], None]) -> None:
    """Copy a server's output to ours, line by line, and let ``on_line`` read each line."""
    for raw in stream:
        line = raw.decode(errors="replace")
        output.write(line, sys.stderr)
        on_line(line)
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
        "--mode",
        choices=MODES,
        default=DEFAULT,
        help="how the app pushes each hit at the start: handed to asyncbridge.run_soon, or "
        "inline with a blocking client (the dashboard's switch flips it; default asyncbridge)",
    )
    parser.add_argument(
        "--traffic", type=int, default=0, metavar="N", help="send N tracked hits once started"
    )
    parser.add_argument(
        "--rate", type=float, default=20.0, help="hits per second for --traffic (0: no limit)"
    )
    parser.add_argument(
        "--hub-delay",
        type=float,
        default=0.05,
        metavar="SECONDS",
        help="how long the hub takes to accept each push, like a hosted service (default 0.05); "
        "make it 2 to watch Ctrl-C drain work in flight",
    )
    parser.add_argument(
        "--status-dir",
        type=Path,
        default=None,
        metavar="DIR",
        help="where the gunicorn workers publish their asyncbridge figures "
        "(ASYNCBRIDGE_STATUS_DIR), read by the dashboard's Background loops panel and by "
        "python -m asyncbridge status (default: a temporary directory, removed at the end)",
    )
    parser.add_argument(
        "--log",
        type=Path,
        default=None,
        metavar="FILE",
        help="also append everything the demo and its servers print to FILE (use it rather "
        "than a pipe to tee, which the same Ctrl-C stops)",
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
    def __init__(self, args: argparse.Namespace, output: _Output) -> None:
        self.args = args
        self.output = output
        self.stopping = threading.Event()
        self.interrupts = 0
        self.hub: subprocess.Popen[bytes] | None = None
        self.gunicorn: subprocess.Popen[bytes] | None = None
        self.gunicorn_status: int | None = None
        self.workers: list[int] = []  # every worker gunicorn booted, in order
        self.reports: dict[int, str] = {}
        self.forwarders: dict[str, threading.Thread] = {}
        self.traffic: Result | None = None
        self.traffic_done = threading.Event()
        self.traffic_thread: threading.Thread | None = None
        self.state_dir = Path(tempfile.mkdtemp(prefix="asyncbridge-demo-"))
        self.status_dir: Path = args.status_dir or self.state_dir / "status"
        self.up = False

    def print(self, text: str = "") -> None:
        self.output.write(text + "\n", sys.stdout)

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

    def _on_gunicorn_line(self, line: str) -> None:
        booted = BOOTED.search(line)
        if booted:
            self.workers.append(int(booted.group(1)))
        found = REPORT.search(line)
        if found:  # one per worker, even if it is logged twice (a report that is not clean)
            self.reports.setdefault(int(found.group(1)), found.group(0))

    def _spawn(
        self, what: str, argv: list[str], env: dict[str, str], on_line: Callable[[str], None]
    ) -> subprocess.Popen[bytes]:
        # A session of its own: a terminal's Ctrl-C goes to its foreground process group, which
        # is this runner's, and must not reach gunicorn's workers (SIGINT is their quick exit,
        # which cancels pushes in flight) nor the hub (which must outlive the workers' drain).
        proc = subprocess.Popen(
            [sys.executable, *argv],
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        assert proc.stdout is not None
        forwarder = threading.Thread(
            target=_forward, args=(proc.stdout, self.output, on_line), daemon=True
        )
        forwarder.start()
        self.forwarders[what] = forwarder
        return proc

    def start(self) -> tuple[str, str]:
        a = self.args
        client = _client_host(a.host)
        hub_port = a.hub_port or _free_port(a.host)
        app_port = a.app_port or _free_port(a.host)
        hub_url = f"http://{client}:{hub_port}"
        app_url = f"http://{client}:{app_port}"
        mode_file = self.state_dir / "mode"
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
        env["PYTHONUNBUFFERED"] = "1"
        env["DEMO_PARENT_PID"] = str(os.getpid())
        hub_argv = ["-m", "demo.hub", "--managed", "--host", a.host, "--port", str(hub_port)]
        hub_argv += ["--delay", str(a.hub_delay), "--mode", a.mode, "--mode-file", str(mode_file)]
        self.status_dir.mkdir(parents=True, exist_ok=True)
        hub_argv += ["--status-dir", str(self.status_dir)]
        self.hub = self._spawn("hub", hub_argv, env, lambda line: None)
        _wait_ready(f"{hub_url}/api/counts", self.hub, "the hub", 20, self.stopping)
        env.update(
            DEMO_APP_BIND=f"{a.host}:{app_port}",
            DEMO_HUB_URL=hub_url,
            DEMO_WORKERS=str(a.workers),
            DEMO_MODE_FILE=str(mode_file),
            DEMO_MODE=a.mode,
            # Each worker's loop publishes its counts there; the master counts exited workers
            # (child_exit), and the hub shows them all on the dashboard.
            ASYNCBRIDGE_STATUS_DIR=str(self.status_dir),
        )
        gunicorn_argv = ["-m", "gunicorn", "-c", "demo/gunicorn.conf.py"]
        self.gunicorn = self._spawn("gunicorn", gunicorn_argv, env, self._on_gunicorn_line)
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
            f"  push mode:     {self.args.mode} (flip it with the dashboard's switch)",
            f"  loops:         {python} -m asyncbridge status --dir {self.status_dir} --watch",
            f"  shared secret: from {secret_source()}",
            "  Ctrl-C stops the traffic, then gunicorn (each worker drains its pending pushes",
            "  and logs its asyncbridge drain report), then the hub.",
            "",
        ]
        self.print("\n".join(lines))

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
        # The traffic first: a hit sent while gunicorn closes its socket would fail, and every
        # hit the app accepted is then in a worker's hands before the workers are told to stop.
        if self.traffic_thread is not None:
            self.traffic_thread.join(30)
        if self.gunicorn is not None:
            logger.info("stopping gunicorn: its workers drain their pending pushes to the hub")
            self.gunicorn_status = _stop(self.gunicorn, "gunicorn", 10 + 15)
            if self.gunicorn_status != 0:
                logger.error("gunicorn exited with status %d", self.gunicorn_status)
            self._join_output("gunicorn")
        counts = None
        if self.hub is not None and hub_url is not None and self.hub.poll() is None:
            # A push the hub still holds (--hub-delay) is answered, or found abandoned, soon.
            deadline = time.monotonic() + self.args.hub_delay + 5
            try:
                counts = _get_json(f"{hub_url}/api/counts")
                while counts["in_flight"] and time.monotonic() < deadline:
                    time.sleep(0.05)
                    counts = _get_json(f"{hub_url}/api/counts")
            except (OSError, ValueError) as exc:
                logger.error("could not read the hub's counts: %s", exc)
        if self.hub is not None:
            _stop(self.hub, "the hub", 10)
            self._join_output("hub")
        shutil.rmtree(self.state_dir, ignore_errors=True)
        return counts

    def _join_output(self, what: str) -> None:
        # The log is complete once the pipe closes: every worker's report is in by then. A
        # worker of a killed master may hold it open; it is not waited for long.
        forwarder = self.forwarders.get(what)
        if forwarder is not None:
            forwarder.join(5)

    def summary(self, counts: dict[str, Any] | None, died: bool) -> int:
        if not self.up and not died:
            self.print("demo stopped before it was up")
            return 0
        problems: list[str] = []
        if died:
            problems.append("a server exited unexpectedly (see its log above)")
        if self.gunicorn_status not in (None, 0):
            problems.append(f"gunicorn exited with status {self.gunicorn_status}")
        lines = ["", "asyncbridge drain reports (one per gunicorn worker):"]
        for pid in dict.fromkeys([*self.workers, *self.reports]):
            report = self.reports.get(pid)
            if report is None:
                lines.append(f"  NOT OK: worker {pid} logged no drain report")
                problems.append(f"worker {pid} logged no drain report")
            else:
                lines.append(f"  {report}")
                if "abandoned=" in report or "cancelled at the deadline" in report:
                    problems.append(f"worker {pid} did not drain cleanly")
        if not self.workers and not self.reports:
            lines.append("  (no gunicorn worker was booted)")
        if counts is None:
            problems.append("the hub's counts could not be read")
        else:
            paths = ", ".join(f"{p}={n}" for p, n in sorted(counts["paths"].items()))
            lines.append(
                f"hub: {counts['total']} hits received ({paths or 'none'}); "
                f"{counts['rejected']} rejected, {counts['duplicates']} duplicates, "
                f"{counts['abandoned']} abandoned by their sender"
            )
            if counts["abandoned"]:
                lost = counts["abandoned"]
                lines.append(f"NOT OK: {lost} hits reached the hub after their sender had gone")
                problems.append(f"{lost} hits abandoned by their sender")
        r = self.traffic
        if r is not None:
            lines.append(
                f"traffic: {r.sent} sent, {r.accepted} accepted by the app, {r.failed} failed"
            )
            if r.failed:
                lines.append(f"NOT OK: {r.failed} requests failed: {r.describe_errors()}")
                problems.append(f"{r.failed} requests failed")
            if counts is not None and r.accepted > counts["total"]:
                lost = r.accepted - counts["total"]
                lines.append(f"NOT OK: {lost} accepted hits did not reach the hub")
                problems.append(f"{lost} accepted hits did not reach the hub")
        lines.append("demo stopped cleanly" if not problems else "demo stopped with errors")
        self.print("\n".join(lines))
        return 1 if problems else 0


def main(argv: list[str] | None = None) -> None:
    """Command line: see ``python -m demo.run --help``."""
    args = _parse(argv)
    for stream in (sys.stdout, sys.stderr):  # a pipe is block-buffered by default
        with contextlib.suppress(AttributeError, ValueError):
            stream.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    output = _Output(args.log)
    handler = _OutputHandler(output)
    handler.setFormatter(logging.Formatter("%(asctime)s [demo] %(message)s"))
    logging.basicConfig(level=logging.INFO, handlers=[handler])
    demo = _Demo(args, output)
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # HUP: the terminal closed
        signal.signal(signum, demo.on_signal)
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
    status = demo.summary(counts, died)
    output.close()
    raise SystemExit(status)


if __name__ == "__main__":
    main()
