"""Prometheus metrics of every worker's loop: ``pip install "asyncbridge-loop[prometheus]"``.

Call :func:`install` once per process that exposes metrics, and wherever the service counts its
workers (gunicorn's ``gunicorn.conf.py``, which runs in the master)::

    import asyncbridge.prometheus

    asyncbridge.prometheus.install()

The figures come from what each worker publishes in the status directory
(``ASYNCBRIDGE_STATUS_DIR``, else ``PROMETHEUS_MULTIPROC_DIR``, prometheus_client's multiprocess
directory): counters are summed over every worker, live or gone, so they never reset when gunicorn
recycles a worker; gauges are summed over the live ones. Nothing is updated on the caller's
hand-off path: the loop thread rewrites its worker's figures at most once per loop turn, and this
collector reads them when Prometheus scrapes. Without a status directory it reports this process's
own bridge.

Under gunicorn, prometheus_client's multiprocess mode applies as usual: set
``PROMETHEUS_MULTIPROC_DIR`` before the master starts (empty), expose :func:`registry` (it adds
``MultiProcessCollector`` for your own metrics), and let ``asyncbridge.gunicorn.child_exit`` call
``mark_process_dead`` for each worker that ends (:func:`install` arranges it).

Every metric has the label ``lane``: counters ``asyncbridge_jobs_accepted_total``,
``..._completed_total``, ``..._failed_total``, ``..._timed_out_total``, ``..._cancelled_total``,
``..._dropped_total`` (also ``reason``), ``..._retries_total``, ``asyncbridge_loop_stalls_total``
and ``asyncbridge_jobs_lost_total`` (work of workers that ended without draining); gauges
``asyncbridge_jobs_pending`` and ``asyncbridge_jobs_running``; histograms
``asyncbridge_job_wait_seconds`` (hand-off to the loop turn that starts the job) and
``asyncbridge_job_duration_seconds``.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, cast

import prometheus_client
from prometheus_client import CollectorRegistry, multiprocess
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from . import _publish
from ._api import default_bridge
from ._bridge import Bridge
from ._publish import DURATION_BOUNDS, WAIT_BOUNDS, LaneRecord

__all__ = [
    "CONTENT_TYPE",
    "AsyncBridgeCollector",
    "install",
    "make_wsgi_app",
    "registry",
    "render",
    "start_http_server",
]

CONTENT_TYPE = prometheus_client.CONTENT_TYPE_LATEST
"""The ``Content-Type`` of what :func:`render` returns."""

_COUNTERS = (
    ("accepted", "Jobs accepted by run_soon, submit or run."),
    ("completed", "Jobs that finished without an exception."),
    ("failed", "Jobs that raised an exception."),
    ("timed_out", "Jobs cancelled for running past task_timeout."),
    ("cancelled", "Jobs cancelled before finishing (shutdown deadline, or by their caller)."),
    ("retries", "Retries of jobs (asyncbridge.retrying)."),
)
_DEFAULT_LANE = "default"


class AsyncBridgeCollector:
    """Reads what the workers published and yields asyncbridge's metric families.

    A prometheus_client collector (it has ``collect()``); :func:`install` registers one.

    Args:
        directory: The status directory; default: the bridge's ``status_dir`` option, else
            ``ASYNCBRIDGE_STATUS_DIR``, else ``PROMETHEUS_MULTIPROC_DIR``, read at each scrape.
            With none, the collector reports ``bridge`` in this process only.
        bridge: The bridge for the in-process figures; default: the default bridge.
    """

    def __init__(self, directory: str | None = None, bridge: Bridge | None = None) -> None:
        self._directory = directory
        self._bridge = bridge

    def _lanes(self) -> tuple[dict[str, LaneRecord], dict[str, tuple[int, int]], int, int]:
        """(per-lane sums, per-lane live (pending, running), stalls, processes seen)."""
        bridge = self._bridge or default_bridge()
        directory = self._directory or _publish.resolve_directory(
            getattr(bridge.options, "status_dir", None)
        )
        if directory is not None and os.path.isdir(directory):
            view = _publish.read_directory(directory)
            lanes = view.lanes()
            live: dict[str, tuple[int, int]] = {}
            for rec in view.live:
                for name, lane in rec.lanes.items():
                    p, r = live.get(name, (0, 0))
                    live[name] = (p + lane.counts["pending"], r + lane.counts["running"])
            stalls = view.exited.stalls + sum(r.stalls for r in view.live + view.dead)
            return lanes, live, stalls, len(view.live) + len(view.dead) + view.exited.processes
        return _in_process(bridge)

    def collect(self) -> Iterable[Metric]:
        """The metric families, from the published figures at this moment."""
        lanes, live, stalls, _ = self._lanes()
        if not lanes:
            lanes = {_DEFAULT_LANE: LaneRecord()}
        yield from _families(lanes, live, stalls)


def _families(
    lanes: Mapping[str, LaneRecord], live: Mapping[str, tuple[int, int]], stalls: int
) -> Iterator[Metric]:
    for name, help_text in _COUNTERS:
        family = CounterMetricFamily(f"asyncbridge_jobs_{name}", help_text, labels=["lane"])
        for lane, rec in sorted(lanes.items()):
            family.add_metric([lane], rec.counts[name])
        yield family
    dropped = CounterMetricFamily(
        "asyncbridge_jobs_dropped",
        "Jobs refused: reason full (backlog at max_pending) or closed (after shutdown).",
        labels=["lane", "reason"],
    )
    for lane, rec in sorted(lanes.items()):
        for reason, count in rec.dropped.items():
            dropped.add_metric([lane, reason], count)
    yield dropped
    lost = CounterMetricFamily(
        "asyncbridge_jobs_lost",
        "Accepted jobs unfinished when their worker ended without draining (SIGKILL, a crash), "
        "as counted by the master or the next worker (a lower bound).",
        labels=["lane"],
    )
    for lane, rec in sorted(lanes.items()):
        lost.add_metric([lane], rec.lost)
    yield lost
    stall_family = CounterMetricFamily(
        "asyncbridge_loop_stalls",
        "Episodes in which a loop had no turn for stall_warning seconds or more (a stall holds "
        "every lane of its process; counted under lane default).",
        labels=["lane"],
    )
    stall_family.add_metric([_DEFAULT_LANE], stalls)
    yield stall_family
    for gauge, index, help_text in (
        ("pending", 0, "Jobs accepted and waiting to start, in live workers."),
        ("running", 1, "Jobs started and not finished, in live workers."),
    ):
        family_g = GaugeMetricFamily(f"asyncbridge_jobs_{gauge}", help_text, labels=["lane"])
        for lane in sorted(lanes):
            family_g.add_metric([lane], live.get(lane, (0, 0))[index])
        yield family_g
    for hist, bounds, help_text in (
        (
            "wait",
            WAIT_BOUNDS,
            "Seconds from hand-off to the loop turn that starts the job (at most one wake-up "
            "over the truth).",
        ),
        ("duration", DURATION_BOUNDS, "Seconds from a job's start to its end."),
    ):
        family_h = HistogramMetricFamily(
            f"asyncbridge_job_{hist}_seconds", help_text, labels=["lane"]
        )
        for lane, rec in sorted(lanes.items()):
            counts = rec.wait_counts if hist == "wait" else rec.duration_counts
            total = rec.wait_sum if hist == "wait" else rec.duration_sum
            cumulative = 0
            buckets: list[tuple[str, float]] = []
            for bound, n in zip(bounds, counts, strict=True):
                cumulative += n
                buckets.append((_go(bound), cumulative))
            family_h.add_metric([lane], buckets, total)
        yield family_h


def _go(bound: float) -> str:
    return str(floatToGoString(bound))  # type: ignore[no-untyped-call]


def _in_process(
    bridge: Bridge,
) -> tuple[dict[str, LaneRecord], dict[str, tuple[int, int]], int, int]:
    stats = bridge.stats()
    timings = _publish.timings_of(bridge)
    lanes: dict[str, LaneRecord] = {}
    live: dict[str, tuple[int, int]] = {}
    for name, lane_stats in _publish.lanes_of(stats).items():
        rec = _publish.record_of(lane_stats, timings.get(name))
        lanes[name] = rec
        live[name] = (rec.counts["pending"], rec.counts["running"])
    return lanes, live, int(getattr(stats, "stalls", 0)), 1


# -- wiring ---------------------------------------------------------------------------------


_lock = threading.Lock()
_installed: dict[int, AsyncBridgeCollector] = {}


def install(registry: CollectorRegistry | None = None) -> AsyncBridgeCollector:
    """Expose asyncbridge's metrics through ``registry``, and count workers as they end.

    Idempotent per registry. In this process it also starts timing jobs for the histograms (the
    workers of a status directory time theirs anyway), and registers with the core so that each
    worker counted as gone (``asyncbridge.gunicorn.child_exit``, or a uWSGI worker's successor)
    is passed to prometheus_client's ``mark_process_dead`` in multiprocess mode.

    Args:
        registry: Where to register the collector; default ``prometheus_client.REGISTRY``. In
            multiprocess mode use :func:`registry` (or :func:`render`) to expose instead.

    Returns:
        The collector registered.
    """
    target = prometheus_client.REGISTRY if registry is None else registry
    with _lock:
        collector = _installed.get(id(target))
        if collector is None:
            collector = AsyncBridgeCollector()
            target.register(cast(Collector, collector))
            _installed[id(target)] = collector
    _publish.on_worker_gone(_mark_process_dead)
    _publish.want_timing(default_bridge())
    return collector


def _mark_process_dead(pid: int, claimed: object) -> None:
    directory = os.environ.get(_publish.ENV_PROMETHEUS_DIR)
    if directory and os.path.isdir(directory):
        multiprocess.mark_process_dead(pid, directory)  # type: ignore[no-untyped-call]


def registry() -> CollectorRegistry:
    """A registry with asyncbridge's collector and, in multiprocess mode, prometheus_client's
    ``MultiProcessCollector`` (your own metrics of every worker). Make one per exposition (per
    request in a view), as prometheus_client advises for multiprocess mode."""
    reg = CollectorRegistry()
    directory = os.environ.get(_publish.ENV_PROMETHEUS_DIR)
    if directory:
        multiprocess.MultiProcessCollector(reg, path=directory)  # type: ignore[no-untyped-call]
    reg.register(cast(Collector, AsyncBridgeCollector()))
    return reg


def _exposed() -> CollectorRegistry:
    if os.environ.get(_publish.ENV_PROMETHEUS_DIR):
        return registry()
    install()
    return prometheus_client.REGISTRY


def render(registry: CollectorRegistry | None = None) -> tuple[bytes, str]:
    """The metrics in Prometheus' text format, for a view: ``(body, content_type)``.

    Args:
        registry: What to render; default: :func:`registry` in multiprocess mode, else
            ``prometheus_client.REGISTRY`` with the collector installed.
    """
    return prometheus_client.generate_latest(registry or _exposed()), CONTENT_TYPE


def make_wsgi_app(registry: CollectorRegistry | None = None) -> Any:
    """A WSGI app that serves the metrics (mount it at ``/metrics``)."""
    if registry is not None:
        return prometheus_client.make_wsgi_app(registry)

    def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        return prometheus_client.make_wsgi_app(_exposed())(environ, start_response)  # type: ignore[no-any-return]

    return app


def start_http_server(port: int, addr: str = "127.0.0.1") -> Any:
    """Serve the metrics on a port of their own, from a thread of this process.

    Under gunicorn, call it from the master's ``when_ready`` hook: the master outlives every
    worker, and the figures of all of them are in the status directory.

    Returns:
        What ``prometheus_client.start_http_server`` returns (the server and its thread).
    """
    if os.environ.get(_publish.ENV_PROMETHEUS_DIR):
        reg = registry()
    else:
        install()
        reg = prometheus_client.REGISTRY
    return prometheus_client.start_http_server(port, addr=addr, registry=reg)
