"""The seed scenario, batched: one event per request, sent one per POST or ten per POST.

Run: ``.venv/bin/python bench/seed_batched.py`` (``--smoke`` for a short run).

The seed scenario's gunicorn (2 sync workers, ``bench/seed_gunicorn_conf.py``), app
(``bench/seed_app.py``) and runs (``seed_scenario.one_run``), with a sink in its own process that
answers each POST after 100 ms, whether it carries one event (``/notify``) or a batch
(``/batch``). Modes: ``ceiling`` (no event), ``naive`` (a loop in a daemon thread, one POST per
event), ``asyncbridge`` (``run_soon``, one POST per event) and ``batched``
(``asyncbridge.batcher``, up to 10 events per POST); ``lean`` when asked for. Saturation with
``wrk -c8`` (installed with apt-get when missing and run as root; else the bundled generator).
Every run ends with a graceful stop, after which the events the sink received are compared with
those the workers accepted. The target: batched serves at least 2x the naive loop's req/s, with
every event delivered.
"""

from __future__ import annotations

import asyncio
import sys

from _common import machine, target_line
from aiohttp import web
from seed_scenario import Run, chosen_modes, ensure_wrk, one_run, seed_options, table

from tests.e2e.sink import Sink

MODES = {
    "ceiling": "no event (ceiling)",
    "naive": "naive loop-in-thread, one POST per event",
    "asyncbridge": "asyncbridge.run_soon, one POST per event",
    "lean": "asyncbridge.run_soon, one POST per event, lean session",
    "batched": "asyncbridge.batcher, 10 events per POST",
}


class BatchSink(Sink):
    """tests/e2e/sink.py's Sink with a batch endpoint: ``POST /batch`` of ``{"events": [...]}``.

    A batch is answered after the same delay as one event, and its events are counted as the
    Sink counts one: only if the sender is still connected when the answer goes out.
    """

    async def _batch(self, request: web.Request) -> web.Response:
        body = await request.json()
        events = body["events"]
        with self._lock:
            self.requests += len(events)
        if self.delay:
            await asyncio.sleep(self.delay)
        transport = request.transport
        gone = transport is None or transport.is_closing()
        with self._lock:
            counter = self.abandoned if gone else self.ids
            for event in events:
                counter[str(event.get("id"))] += 1
        if gone:
            return web.json_response({"ok": False}, status=499)
        return web.json_response({"ok": True, "events": len(events)})

    async def _start_site(self) -> None:
        app = web.Application()
        app.router.add_post("/notify", self._notify)
        app.router.add_post("/batch", self._batch)
        app.router.add_get("/count", self._count)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        self._site = web.TCPSite(self._runner, "127.0.0.1", self.port, backlog=2048)
        await self._site.start()
        server = self._site._server
        assert isinstance(server, asyncio.Server)
        self.port = server.sockets[0].getsockname()[1]


_SINK = """
import sys
from seed_batched import BatchSink
sink = BatchSink(delay=float(sys.argv[1])).start()
print(sink.port, flush=True)
sys.stdin.read()
sink.stop()
"""


def main(argv: list[str] | None = None) -> int:
    parser = seed_options(
        "gunicorn seed scenario, batched",
        MODES,
        ["ceiling", "naive", "asyncbridge", "batched"],
        "all but lean",
    )
    args = parser.parse_args(argv)
    modes = chosen_modes(parser, args, MODES)
    wrk = None if args.no_wrk else ensure_wrk()
    print("# seed scenario, batched (gunicorn, 2 sync workers, sink answering after 100 ms)")
    print(f"machine: {machine()}")
    print(
        f"{args.seconds:g} s per run, {args.runs} interleaved run(s) per mode; saturation load: "
        f"{'wrk -c8' if wrk else 'bundled closed-loop generator, 8 connections'}"
    )
    runs: dict[str, list[Run]] = {m: [] for m in modes}
    for _ in range(args.runs):
        for mode in modes:
            runs[mode].append(
                one_run(mode, "saturation", args.seconds, wrk, 0.0, sink_script=_SINK)
            )
    labels = {m: MODES[m] for m in modes}
    medians = {
        mode: med["rps"]
        for mode, med in table("saturation (closed loop, 8 connections)", runs, labels).items()
    }
    print("\n### targets (ratios from this run)\n")
    if {"lean", "asyncbridge"} <= medians.keys():
        lean = medians["lean"] / medians["asyncbridge"]
        print(f"(lean session / default session req/s: {lean:.2f})")
    if {"batched", "naive"} <= medians.keys():
        target_line(
            "saturation: batched / naive req/s",
            medians["batched"] / medians["naive"],
            ">=",
            2.0,
            "medians",
        )
    for mode in ("batched", "asyncbridge", "lean"):
        if mode in runs:
            accepted = sum(r.accepted for r in runs[mode])
            received = sum(r.received for r in runs[mode])
            target_line(
                f"saturation: {mode} events received / accepted (%)",
                100 * received / accepted if accepted else float("nan"),
                ">=",
                100,
                f"{received}/{accepted}",
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
