"""Ctrl-C pressed in a terminal, for real: the demo runs in a pseudo-terminal and gets ``^C``.

The pty's line discipline turns the byte ``\\x03`` into SIGINT for the terminal's foreground
process group, exactly as when a person presses Ctrl-C. Before the fix that group held gunicorn
and its workers too, which took their quick exit and cancelled the pushes in flight.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

import pytest

from .procs import PYTHON, ROOT, http_get
from .sink import wait_until
from .test_demo import kill_leftovers

pytestmark = pytest.mark.e2e

# Runs in the child, in a session of its own (setsid): makes the pty on fd 0 its controlling
# terminal and its process group the foreground one, then becomes the program.
_IN_TERMINAL = """\
import fcntl, os, sys, termios
fcntl.ioctl(0, termios.TIOCSCTTY, 0)
os.tcsetpgrp(0, os.getpgrp())
os.execvp(sys.argv[1], sys.argv[1:])
"""

# ``demo ... | tee FILE`` as a shell runs it: both in the terminal's foreground group, so the same
# Ctrl-C that reaches the demo kills tee. The shell itself survives the Ctrl-C.
_PIPED_TO_TEE = """\
import signal, subprocess, sys
signal.signal(signal.SIGINT, lambda signum, frame: None)
demo = subprocess.Popen(sys.argv[2:], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
tee = subprocess.Popen(["tee", sys.argv[1]], stdin=demo.stdout)
demo.stdout.close()
status = demo.wait()
tee.wait()
print(f"[pipeline] demo exited {status}, tee exited {tee.returncode}", file=sys.stderr)
sys.exit(status)
"""

REPORT = re.compile(
    r"asyncbridge shutdown of pid (\d+) .*?: accepted=(\d+) completed=(\d+) failed=(\d+)"
    r" timed_out=(\d+) cancelled=(\d+) dropped_full=(\d+) dropped_closed=(\d+)"
)
TRAFFIC = re.compile(r"^traffic: (\d+) sent, (\d+) accepted by the app, (\d+) failed$", re.M)
HUB = re.compile(r"^hub: (\d+) hits received", re.M)
BOOTED = re.compile(r"Booting worker with pid: (\d+)")


class Terminal:
    """A program in a pseudo-terminal, as in a terminal window.

    The program leads a new session whose controlling terminal is the pty, in the foreground
    process group. Everything it writes is collected (and copied to ``log``).
    """

    def __init__(self, argv: Sequence[str], *, log: Path, env: dict[str, str]) -> None:
        self.log = log
        master, slave = os.openpty()
        full_env = {**os.environ, "PYTHONPATH": str(ROOT), **env}
        self.proc = subprocess.Popen(
            [PYTHON, "-c", _IN_TERMINAL, *argv],
            stdin=slave,
            stdout=slave,
            stderr=slave,
            cwd=ROOT,
            env=full_env,
            start_new_session=True,
        )
        os.close(slave)
        self.master = master
        self._chunks: list[bytes] = []
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        with open(self.log, "wb") as copy:
            while True:
                try:
                    data = os.read(self.master, 65536)
                except OSError as exc:  # EIO: every slave side is closed
                    if exc.errno != errno.EIO:
                        raise
                    return
                if not data:
                    return
                copy.write(data)
                copy.flush()
                with self._lock:
                    self._chunks.append(data)

    def output(self) -> str:
        with self._lock:
            text = b"".join(self._chunks).decode(errors="replace")
        return text.replace("\r\n", "\n")

    def wait_for(self, pattern: str, timeout: float) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = re.search(pattern, self.output(), re.M)
            if found:
                return found
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"no {pattern!r} within {timeout}s; output:\n{self.output()[-3000:]}")

    def press_ctrl_c(self) -> None:
        os.write(self.master, b"\x03")

    def wait(self, timeout: float) -> int:
        try:
            status = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"still running {timeout}s after Ctrl-C; output:\n{self.output()[-3000:]}"
            ) from None
        self._reader.join(10)
        return status

    def close(self) -> None:
        """Kill whatever is left: the program's session and every server it started."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(10)
        kill_leftovers(self.output())
        self._reader.join(10)
        os.close(self.master)


def _demo_argv(*extra: str) -> list[str]:
    return [
        PYTHON,
        "-m",
        "demo.run",
        "--traffic",
        "400",
        "--rate",
        "100",
        "--hub-delay",
        "2",
        *extra,
    ]


def _in_flight(app_url: str) -> bool:
    """Whether the worker that answers has pushes still pending or running."""
    try:
        status, body = http_get(f"{app_url}/stats", timeout=2)
    except OSError:
        return False
    stats = json.loads(body) if status == 200 else {}
    return bool(stats.get("pending", 0) + stats.get("running", 0))


def _check_drained(output: str, secret: str) -> tuple[int, int, int]:
    """Every accepted hit reached the hub, each worker reported once and cleanly.

    Returns:
        (sent, accepted, delivered).
    """
    traffic = TRAFFIC.search(output)
    hub = HUB.search(output)
    assert traffic and hub, output[-3000:]
    sent, accepted, failed = map(int, traffic.groups())
    delivered = int(hub.group(1))
    assert (failed, accepted) == (0, sent), output[-3000:]
    assert 0 < sent < 400, "Ctrl-C was meant to come mid-traffic"
    assert delivered == accepted

    workers = [int(pid) for pid in BOOTED.findall(output)]
    assert len(workers) == 2
    reports = {int(m.group(1)): tuple(map(int, m.groups()[1:])) for m in REPORT.finditer(output)}
    assert sorted(reports) == sorted(workers), output[-3000:]
    assert sum(r[0] for r in reports.values()) == accepted
    for pid, (acc, completed, *rest) in reports.items():
        assert (completed, rest) == (acc, [0, 0, 0, 0, 0]), (pid, reports[pid])
        # The worker's own log line and the summary's copy of it, nothing more.
        assert len(re.findall(rf"asyncbridge shutdown of pid {pid} ", output)) == 2
        # Graceful: SIGTERM from the master, once, never the quick path's SIGINT/SIGQUIT.
        assert output.count(f"Worker exiting (pid: {pid})") == 1
    assert "asyncbridge: SIGINT/SIGQUIT in worker" not in output
    assert output.count("Handling signal: term") == 1
    assert "Handling signal: int" not in output
    assert output.count("SIGINT received: stopping") == 1
    assert "NOT OK" not in output
    assert output.rstrip().endswith("demo stopped cleanly")
    assert secret not in output
    return sent, accepted, delivered


def test_ctrl_c_in_a_terminal_drains_every_accepted_hit(tmp_path: Path) -> None:
    secret = "test-secret-" + uuid.uuid4().hex
    term = Terminal(_demo_argv(), log=tmp_path / "terminal.log", env={"DEMO_SECRET": secret})
    try:
        app_url = term.wait_for(r"the app:\s+(\S+)/ ", 40).group(1)
        term.wait_for(r"\[demo\] traffic: \d+/400 sent", 20)
        assert wait_until(lambda: _in_flight(app_url), timeout=10)  # the hub holds each 2 s
        term.press_ctrl_c()
        assert term.wait(60) == 0, term.output()[-3000:]
        output = term.output()
    finally:
        term.close()
    sent, accepted, delivered = _check_drained(output, secret)
    print(f"Ctrl-C in a pty: {sent} sent, {accepted} accepted, {delivered} delivered")


def test_ctrl_c_with_the_output_piped_to_tee_keeps_it_all_in_the_log_file(tmp_path: Path) -> None:
    # The same Ctrl-C kills tee: the demo must not lose its reports with its stdout, and --log
    # must hold everything. tee's copy must have had the banner at once (output flushed per
    # line into a pipe), well before the demo stops.
    secret = "test-secret-" + uuid.uuid4().hex
    log, teed = tmp_path / "demo.log", tmp_path / "tee.out"
    pipeline = [PYTHON, "-c", _PIPED_TO_TEE, str(teed), *_demo_argv("--log", str(log))]
    term = Terminal(pipeline, log=tmp_path / "terminal.log", env={"DEMO_SECRET": secret})
    try:
        assert wait_until(lambda: "the app:" in _text(teed), timeout=40), term.output()[-3000:]
        app_url = re.search(r"the app:\s+(\S+)/ ", _text(teed))
        assert app_url
        term.wait_for(r"\[demo\] traffic: \d+/400 sent", 20)
        assert wait_until(lambda: _in_flight(app_url.group(1)), timeout=10)
        term.press_ctrl_c()
        assert term.wait(60) == 0, term.output()[-3000:]
        output = term.output()
    finally:
        term.close()
    assert "tee exited -2" in output  # tee died of the SIGINT, as it does in a terminal
    logged = _text(log)
    sent, accepted, delivered = _check_drained(logged, secret)
    assert "dashboard:" in logged and "Starting gunicorn" in logged and "hub stopping" in logged
    # What tee wrote before it died is the start of the log, line for line.
    assert logged.startswith(_text(teed).rsplit("\n", 1)[0])
    print(f"Ctrl-C, piped to tee: {sent} sent, {accepted} accepted, {delivered} delivered")


def _text(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except FileNotFoundError:
        return ""
