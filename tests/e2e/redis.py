"""A throwaway Redis for the task-worker tests: Debian's redis-server on a free loopback port.

Each test gets its own server: no persistence (no RDB snapshots, no AOF), bound to 127.0.0.1,
its files in the test's temporary directory, stopped and gone afterwards. Where redis-server is
not installed the test is skipped with the reason (scripts/test.d/redis.sh installs it).
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from .procs import Server, free_port

__all__ = ["RedisServer", "redis_server"]

_MISSING = (
    "redis-server is not installed: the task-worker tests need Debian's redis-server package "
    "(scripts/test.d/redis.sh installs it: apt-get install -y redis-server)"
)


@dataclass(frozen=True)
class RedisServer:
    """A running redis-server: where it listens, and the process."""

    port: int
    server: Server

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:<port>/0``."""
        return f"redis://127.0.0.1:{self.port}/0"

    def command(self, *args: str, timeout: float = 5.0) -> bytes:
        """Send one command in Redis' inline protocol and return the first line of the answer."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=timeout) as s:
            s.sendall((" ".join(args) + "\r\n").encode())
            answer = b""
            while not answer.endswith(b"\r\n"):
                chunk = s.recv(4096)
                if not chunk:
                    break
                answer += chunk
        return answer.split(b"\r\n", 1)[0]


def _wait_ready(redis: RedisServer, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while time.monotonic() < deadline:
        if redis.server.proc.poll() is not None:
            raise RuntimeError(
                f"redis-server exited with {redis.server.proc.returncode}:\n"
                + redis.server.output()[-2000:]
            )
        try:
            if redis.command("PING", timeout=1.0) == b"+PONG":
                return
        except OSError as exc:
            last = exc
        time.sleep(0.05)
    raise TimeoutError(f"redis-server did not answer PING within {timeout}s (last error: {last})")


@contextlib.contextmanager
def redis_server(directory: Path) -> Iterator[RedisServer]:
    """Start redis-server on a free 127.0.0.1 port; stop it (and wait for it) afterwards.

    Args:
        directory: Where its log and working directory go (a test's ``tmp_path``).

    Raises:
        pytest.skip.Exception: redis-server is not installed.
    """
    exe = shutil.which("redis-server")
    if exe is None:
        pytest.skip(_MISSING)
    port = free_port()
    workdir = directory / "redis"
    workdir.mkdir(exist_ok=True)
    argv = [
        exe,
        "--bind",
        "127.0.0.1",
        "--port",
        str(port),
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        str(workdir),
        "--daemonize",
        "no",
        "--protected-mode",
        "yes",
        "--databases",
        "1",
    ]
    server = Server(argv, log=directory / "redis.log", cwd=workdir)
    try:
        redis = RedisServer(port, server)
        _wait_ready(redis, 15)
        yield redis
    finally:
        server.stop()
