"""asyncbridge.mod_wsgi under a real Apache (Debian's apache2) with mod_wsgi in daemon mode.

Apache runs examples/mod_wsgi/apache.conf as the site, with only its paths, port and
``maximum-requests`` changed, behind a minimal server config; the WSGI script is
examples/mod_wsgi/wsgi.py, whose ``app`` serves tests/e2e/apps/hosts_app.py. mod_wsgi is built
from source against Debian's python3 in .artifacts/hosts-venv (scripts/test.d/hosts.sh), and the
daemons run as www-data, so everything they read or write lives under a world-readable
directory in /tmp.
"""

from __future__ import annotations

import pwd
import re
import shutil
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from asyncbridge.mod_wsgi import _QUIET, APACHE_KILL_AFTER, EXIT_MARGIN

from .apps.host_load import Load, reports, skip_unless_ready, summary, wait_reports
from .procs import ROOT, Server, free_port, http_get, running
from .sink import Sink, wait_until

pytestmark = pytest.mark.e2e

APACHE2 = Path("/usr/sbin/apache2")
MODULES = Path("/usr/lib/apache2/modules")
VENV = ROOT / ".artifacts" / "hosts-venv"
EXAMPLE = ROOT / "examples" / "mod_wsgi"
SHUTDOWN_TIMEOUT = 15.0  # shutdown-timeout in examples/mod_wsgi/apache.conf
DRAIN = 10.0  # drain_timeout in examples/mod_wsgi/wsgi.py
STOP_DEADLINE = APACHE_KILL_AFTER - EXIT_MARGIN  # 1.5 s when Apache stops or restarts

SERVER_CONF = """\
ServerRoot "{root}"
ServerName 127.0.0.1
Listen 127.0.0.1:{port}
PidFile "{root}/httpd.pid"
DefaultRuntimeDir "{root}"
ErrorLog "{root}/error.log"
LogLevel info
LoadModule mpm_event_module {modules}/mod_mpm_event.so
LoadModule authz_core_module {modules}/mod_authz_core.so
User www-data
Group www-data
WSGISocketPrefix "{root}/wsgi"
Include "{root}/site.conf"
"""


def _skip_reason() -> str | None:
    if not APACHE2.exists() or not (MODULES / "mod_mpm_event.so").exists():
        return "Debian's apache2 is not installed (scripts/test.d/hosts.sh installs it)"
    if not (VENV / "bin" / "mod_wsgi-express").exists():
        return f"mod_wsgi is not built in {VENV} (scripts/test.d/hosts.sh builds it)"
    try:
        pwd.getpwnam("www-data")
    except KeyError:
        return "there is no www-data user for mod_wsgi's daemons"
    for path in (ROOT / "asyncbridge" / "__init__.py", VENV / "pyvenv.cfg"):
        if not _readable_by_others(path):
            return f"{path} is not readable by www-data, the daemons' user: use a readable checkout"
    return None


def _readable_by_others(path: Path) -> bool:
    """Whether a user that is neither owner nor group can reach and read ``path``."""
    path = path.resolve()
    if not path.stat().st_mode & stat.S_IROTH:
        return False
    return all(parent.stat().st_mode & stat.S_IXOTH for parent in path.parents)


@pytest.fixture(scope="module")
def module_config() -> str:
    skip_unless_ready("test_mod_wsgi", _skip_reason())
    done = subprocess.run(
        [str(VENV / "bin" / "mod_wsgi-express"), "module-config"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return done.stdout.strip()


@pytest.fixture
def root() -> Iterator[Path]:
    """A short, world-readable directory: the daemons (www-data) read the app and write there,
    and mod_wsgi's unix sockets live there (their paths must fit in 108 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="abm-", dir="/tmp"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


class Apache:
    """One Apache instance: its config files under ``root`` and the commands users run."""

    def __init__(self, root: Path, module_config: str, port: int) -> None:
        self.root, self.port = root, port
        self.conf = root / "httpd.conf"
        self.out = root / "out"
        self.out.mkdir()
        self.out.chmod(0o777)  # the daemons write their reports here as www-data
        app = root / "app"
        app.mkdir()
        self.wsgi = app / "wsgi.py"
        self.site = root / "site.conf"
        shutil.copy(EXAMPLE / "wsgi.py", self.wsgi)
        (app / "app.py").write_text(
            f"import sys\nsys.path.insert(0, {str(ROOT)!r})\n"
            "from tests.e2e.apps.hosts_app import application  # noqa: F401\n"
        )
        site = (EXAMPLE / "apache.conf").read_text()
        site, n = re.subn(
            r"^LoadModule wsgi_module .*\nWSGIPythonHome .*$", module_config, site, flags=re.M
        )
        assert n == 1
        site = site.replace("/srv/app", str(app)).replace("*:80", f"127.0.0.1:{port}")
        self.site.write_text(site)
        self.conf.write_text(SERVER_CONF.format(root=root, port=port, modules=MODULES))
        for path in (app, *app.iterdir(), self.site):
            path.chmod(0o755 if path.is_dir() else 0o644)

    def set(self, option: str, value: str) -> None:
        """Change one option of the example's WSGIDaemonProcess line."""
        site, n = re.subn(rf"\b{option}=\S+", f"{option}={value}", self.site.read_text())
        assert n == 1, option
        self.site.write_text(site)

    def edit_script(self, old: str, new: str) -> None:
        text = self.wsgi.read_text()
        assert old in text
        self.wsgi.write_text(text.replace(old, new))

    def argv(self) -> list[str]:
        return [str(APACHE2), "-f", str(self.conf), "-DFOREGROUND"]

    def command(self, action: str) -> None:
        """``apache2 -k stop`` / ``graceful``: what ``apachectl`` runs."""
        subprocess.run([str(APACHE2), "-f", str(self.conf), "-k", action], check=True, timeout=30)

    def env(self, sink: Sink) -> dict[str, str]:
        return {"SINK_URL": sink.url, "OUT_DIR": str(self.out), "LANG": "C.UTF-8"}

    def error_log(self) -> str:
        path = self.root / "error.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def wait_ready(self, server: Server, timeout: float = 60) -> None:
        """Wait until a daemon answers (mod_wsgi answers 503 while its daemons start)."""

        def ready() -> bool:
            if server.proc.poll() is not None:
                raise RuntimeError(f"apache2 exited:\n{self.error_log()[-3000:]}")
            try:
                return http_get(f"http://127.0.0.1:{self.port}/stats", timeout=5)[0] == 200
            except OSError:
                return False

        if not wait_until(ready, timeout, interval=0.1):
            raise TimeoutError(f"no daemon answered:\n{self.error_log()[-3000:]}")


@pytest.fixture
def sink() -> Iterator[Sink]:
    with Sink(delay=0.1) as s:
        yield s


def test_example_script_passes_the_shutdown_timeout_of_the_example_site() -> None:
    site = (EXAMPLE / "apache.conf").read_text()
    script = (EXAMPLE / "wsgi.py").read_text()
    conf_value = re.findall(r"\bshutdown-timeout=(\d+)", site)
    script_value = re.findall(r"install\(shutdown_timeout=(\d+)\)", script)
    assert conf_value == script_value == [f"{SHUTDOWN_TIMEOUT:g}"]
    assert f"drain_timeout={DRAIN:g})" in script


def test_recycling_graceful_restart_and_stop_with_work_in_flight_lose_nothing(
    module_config: str, sink: Sink, root: Path
) -> None:
    apache = Apache(root, module_config, free_port())
    apache.set("maximum-requests", "60")  # each of the 2 daemons recycles during the load
    load = Load(f"http://127.0.0.1:{apache.port}", hold=0.02)
    with running(apache.argv(), log=root / "apache.out", env=apache.env(sink)) as server:
        apache.wait_ready(server)
        load.fire(150, retry=True)
        first = set(load.pids)
        apache.command("graceful")  # Apache restarts its children and mod_wsgi's daemons
        assert wait_until(lambda: first <= set(reports(apache.out)), 30)
        load.fire(150, retry=True)
        sink.delay = 1.0  # below the 1.5 s Apache's stop leaves for the drain
        load.hold = 0.0
        load.fire(20)
        burst = {int(a["pid"]) for a in load.answers[-20:]}
        stopped = time.monotonic()
        apache.command("stop")
        workers = wait_reports(apache.out, load.pids, 30)
        assert server.wait(30) == 0
        wall = time.monotonic() - stopped
    log = apache.error_log()

    figures = load.check(sink, workers)
    assert figures["requests"] == 320
    assert figures["retries"] == 0  # no request was lost between Apache and a daemon
    assert load.interleavings() > 0  # both daemons served side by side
    for w in workers.values():
        # Drained in asyncbridge.mod_wsgi's subscribe_shutdown callback, on the daemon's
        # main thread, before mod_wsgi joins its request threads.
        assert "mod_wsgi.py:__call__" in w["stack"], w["stack"]
        assert 0 < w["deadline"] <= DRAIN
    # Recycled by maximum-requests: the whole drain_timeout fits in shutdown-timeout - 1.5,
    # less the time spent waiting for requests still running (at most half of it; a request
    # holds 20 ms, longer on a loaded machine). (A daemon winding down after maximum-requests,
    # serving on for up to graceful-timeout, keeps that reason when the graceful restart then
    # stops it.)
    recycled = [w for w in workers.values() if w["deadline"] > STOP_DEADLINE]
    assert len(recycled) >= 2
    assert all(DRAIN / 2 <= w["deadline"] <= DRAIN - _QUIET for w in recycled), workers
    # a daemon with no request running at its stop loses only the quiet wait (and its polling)
    assert any(w["deadline"] >= DRAIN - _QUIET - 0.1 for w in recycled), workers
    assert log.count("mod_wsgi is stopping this process (maximum_requests)") == len(recycled)
    # Stopped by Apache with the burst in flight: 3 s before SIGKILL, so 1.5 s of drain.
    # (the burst's requests were answered before the stop, so these waited only for _QUIET)
    assert all(
        STOP_DEADLINE / 2 <= workers[pid]["deadline"] <= STOP_DEADLINE - _QUIET for pid in burst
    ), workers
    assert log.count("mod_wsgi is stopping this process (shutdown_signal)") >= len(burst)
    assert "Shutdown timeout expired" not in log  # no daemon was aborted mid-drain
    stopped_by_apache = [w for w in workers.values() if w["deadline"] < DRAIN]
    summary(
        "mod_wsgi",
        figures,
        recycled=len(recycled),
        stopped=len(stopped_by_apache),
        interleavings=load.interleavings(),
        stop_wall_s=round(wall, 1),
    )


@pytest.mark.parametrize("installed", [True, False], ids=["install", "atexit-only"])
def test_work_slower_than_shutdown_timeout_is_counted_only_with_install(
    module_config: str, sink: Sink, root: Path, installed: bool
) -> None:
    """Control: mod_wsgi's default shutdown-timeout of 5 s, notifications that take 6 s.

    One daemon, recycled by maximum-requests with 9 notifications in flight. With install(),
    it drains for 5 - 1.5 = 3.5 s, cancels the rest and reports it: every loss is counted and
    named. With only the core's atexit fallback (drain_timeout 10 s), mod_wsgi's reaper aborts
    the daemon at 5 s, mid-drain: the same loss, silent, with no report at all.
    """
    apache = Apache(root, module_config, free_port())
    apache.set("processes", "1")
    apache.set("shutdown-timeout", "5")
    apache.set("maximum-requests", "10")  # the /stats probe, then 9 notifications
    old = f"asyncbridge.mod_wsgi.install(shutdown_timeout={SHUTDOWN_TIMEOUT:g})"
    apache.edit_script(old, "asyncbridge.mod_wsgi.install(shutdown_timeout=5)" if installed else "")
    sink.delay = 6.0
    load = Load(f"http://127.0.0.1:{apache.port}", hold=0.05)
    with running(apache.argv(), log=root / "apache.out", env=apache.env(sink)) as server:
        apache.wait_ready(server)
        load.fire(9)
        (pid,) = load.pids

        def gone() -> bool:
            return pid in reports(apache.out) or "Shutdown timeout expired" in apache.error_log()

        assert wait_until(gone, 15)
        time.sleep(0.5)  # let an aborted daemon's sink connections close
        log = apache.error_log()
        workers = reports(apache.out)
        apache.command("stop")
        assert server.wait(30) == 0

    accepted = sum(a["accepted"] for a in load.answers)
    assert accepted == len(load.answers) == 9
    assert "Maximum requests reached" in log
    assert sink.received == 0  # nothing could arrive: the sink takes 6 s
    aborted = log.count("Shutdown timeout expired")
    if installed:
        report = workers[pid]
        assert (5 - EXIT_MARGIN) / 2 <= report["deadline"] <= 5 - EXIT_MARGIN - _QUIET
        assert (report["accepted"], report["completed"], report["cancelled"]) == (9, 0, 9)
        assert "cancelled at the deadline: notify x9" in log
        assert aborted == 0
    else:
        assert pid not in workers  # no drain report: the loss is not counted anywhere
        assert aborted == 1
    summary(
        "mod_wsgi control",
        {"requests": 9, "accepted": accepted, "received": sink.received},
        lost=accepted - sink.received,
        installed=installed,
        counted=workers[pid]["cancelled"] if pid in workers else 0,
        aborted=aborted,
    )
