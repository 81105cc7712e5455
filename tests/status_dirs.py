"""Status directories for the tests of what reads them (``status``, the Prometheus collector).

Only the figures of this process's live worker differ from one test file to the other; the two
dead workers are always the same: one that held 4 jobs, counted by the master as gunicorn's
``child_exit`` would, and one that held 6, gone and not yet counted.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from asyncbridge import _publish
from asyncbridge._publish import Publisher, Timing

from .helpers import ROOT

__all__ = ["counts", "env_with_status_dir", "run_python", "workers_directory"]


def counts(**values: int) -> tuple[int, ...]:
    """One lane's counters in the order a status file keeps them; the others are 0."""
    return tuple(values.get(name, 0) for name in _publish.COUNTERS)


@contextlib.contextmanager
def workers_directory(
    directory: Path, live: tuple[int, ...], timing: Timing | None = None, **write: Any
) -> Iterator[Path]:
    """``directory`` with this process publishing ``live`` (and ``write``'s keywords) as its
    default lane, and two forked workers killed with 4 and 6 jobs running, the first counted."""
    publisher = Publisher(str(directory))
    publisher.write([("default", live, timing)], **write)
    for hang in (4, 6):
        pid = os.fork()
        if pid == 0:
            pub = Publisher(str(directory))
            pub.write([("default", counts(accepted=hang + 1, completed=1, running=hang), None)])
            os._exit(0)
        os.waitpid(pid, 0)
        if hang == 4:
            _publish.worker_gone(pid, str(directory))
    try:
        yield directory
    finally:
        publisher.close()


def env_with_status_dir(directory: Path) -> dict[str, str]:
    """This environment with ``ASYNCBRIDGE_STATUS_DIR`` set to ``directory`` and no
    ``PROMETHEUS_MULTIPROC_DIR`` (it would be the fallback)."""
    env = {**os.environ, "ASYNCBRIDGE_STATUS_DIR": str(directory)}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    return env


def run_python(
    args: Sequence[str], env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``python <args>`` from the repository's root, its output captured, within 60 s."""
    return subprocess.run(
        [sys.executable, *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env=env,
        check=False,
    )
