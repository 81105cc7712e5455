"""Subprocesses for end-to-end tests: free ports, bounded waits, and certain teardown."""

from __future__ import annotations

import contextlib
import itertools
import os
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

__all__ = ["ROOT", "Server", "free_port", "http_get", "wait_http"]

ROOT = Path(__file__).resolve().parents[2]


def _port_block() -> range | None:
    """This pytest-xdist process's own ports, below the kernel's ephemeral range (or None).

    A port that ``bind(0)`` found free is handed back to the kernel's pool the moment it is
    closed, and another test process (or any outgoing connection) may get it before the server
    this test starts binds it: once a demo's hub failed with "address already in use", and its
    readiness check was answered by another test's server. Below the ephemeral range, in a block
    of its own per xdist process, no one else picks the same port.
    """
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    index = int(worker[2:]) if worker[2:].isdigit() else 0
    size = 2000
    start = 10000 + (index % 8) * size
    if start + size > low:
        return None
    return range(start, start + size)


_BLOCK = _port_block()
_next = itertools.count(random.randrange(_BLOCK.stop - _BLOCK.start) if _BLOCK else 0)


def free_port() -> int:
    """A free TCP port on 127.0.0.1 for a server that a test starts."""
    if _BLOCK is not None:
        for _ in range(len(_BLOCK)):
            port = _BLOCK.start + next(_next) % len(_BLOCK)
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def wait_http(
    url: str,
    timeout: float,
    proc: subprocess.Popen[bytes] | None = None,
    output: Callable[[], str] | None = None,
) -> None:
    """Wait until ``url`` answers at all, failing early if ``proc`` exits first.

    ``output``, if given, returns what the server wrote: its end goes into the error.
    """
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            tail = f":\n{output()[-3000:]}" if output is not None else ""
            raise RuntimeError(f"server exited with {proc.returncode} before answering {url}{tail}")
        try:
            http_get(url, timeout=1.0)
            return
        except OSError as exc:
            last = exc
            time.sleep(0.05)
    raise TimeoutError(f"{url} did not answer within {timeout}s (last error: {last})")


class Server:
    """A server subprocess in its own process group, with its output in a log file."""

    def __init__(
        self, argv: Sequence[str], *, log: Path, env: dict[str, str] | None = None, cwd: Path = ROOT
    ) -> None:
        self.argv = list(argv)
        self.log_path = log
        full_env = dict(os.environ)
        full_env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(ROOT), full_env.get("PYTHONPATH", "")) if p
        )
        full_env.update(env or {})
        self._log = open(log, "wb")  # closed in stop()
        self.proc = subprocess.Popen(
            self.argv,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            env=full_env,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def signal(self, signum: int) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signum)

    def wait(self, timeout: float) -> int:
        """Wait for the server to exit; on timeout, kill its whole group and fail."""
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise TimeoutError(
                f"{self.argv[0]} did not exit within {timeout}s; killed. Log:\n"
                + self.output()[-4000:]
            ) from None

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(10)

    def stop(self) -> None:
        """Tear down: the process group is always gone afterwards."""
        if self.proc.poll() is None:
            self.signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                pass
        self.kill()  # stray workers of the group too
        self._log.close()

    def output(self) -> str:
        """Everything the server has written so far; after ``stop()``, all it wrote."""
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")


@contextlib.contextmanager
def running(
    argv: Sequence[str], *, log: Path, env: dict[str, str] | None = None, cwd: Path = ROOT
) -> Iterator[Server]:
    server = Server(argv, log=log, env=env, cwd=cwd)
    try:
        yield server
    finally:
        server.stop()


PYTHON = sys.executable
