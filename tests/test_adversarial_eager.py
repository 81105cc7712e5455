"""Adversarial cases against the loop side's eager start, chunked passes and queued refills.

On Python 3.12+ each job's first step runs inside the pass that starts it (``start_waiting``),
before its task is registered; a pass starts at most ``_CHUNK`` coroutines and queues the next;
ended jobs, sleeping retries and ended flushes refill slots through one queued pass. These cases
try to break the promises (never hangs, shutdown never raises and keeps its deadline, every
accepted job is counted, logs carry qualnames only) from inside a job's first step, around the
chunk boundary and the ``submit()`` cancel race.

Each case is a child program run by the battery of ``tests/test_adversarial.py`` (its helper,
its prelude and its hard timeout per child); run this module under 3.11, 3.12 and 3.13 alike.
"""

from __future__ import annotations

import concurrent.futures
import sys
import textwrap
from collections.abc import Callable, Iterator

import pytest

from tests import test_adversarial as adv
from tests.test_adversarial import Outcome, assert_quiet, balanced, report_lines

EAGER = sys.version_info >= (3, 12)

# The battery's fixture that hands a test its child's outcome; the prefetch below replaces the
# battery's own (which starts the children of its module only).
outcome = adv.outcome

# Prepended to every case of this module (after the battery's prelude).
HELPERS = r'''
def park(b):
    """Hold the loop in a callback until the returned event is set: work piles up meanwhile."""
    entered, release = threading.Event(), threading.Event()
    def hold():
        entered.set()
        release.wait(10)
    b.get_loop().call_soon_threadsafe(hold)
    assert entered.wait(5)
    return release

def eager_loop(b):
    """Give ``b``'s loop asyncio's eager task factory (3.12+); return the loop."""
    loop = b.get_loop()
    loop.call_soon_threadsafe(loop.set_task_factory, asyncio.eager_task_factory)
    deadline = time.monotonic() + 5
    while loop.get_task_factory() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    return loop

EAGER = sys.version_info >= (3, 12)
'''


def case(
    code: str, *, timeout: float = 30.0
) -> Callable[[Callable[[Outcome], None]], Callable[[Outcome], None]]:
    """Register a child program (with this module's helpers) for the decorated test."""
    return adv.child(HELPERS + textwrap.dedent(code), timeout=timeout)


@pytest.fixture(scope="module")
def _prefetched(
    request: pytest.FixtureRequest,
) -> Iterator[dict[str, concurrent.futures.Future[Outcome]]]:
    """Start the child programs of every selected test of this module, a few at a time."""
    yield from adv.prefetch_cases(request, sys.modules[__name__])


# ---------------------------------------------------------------------------------------------
# A job's first step calling the bridge
# ---------------------------------------------------------------------------------------------


@case(
    """
    from asyncbridge import AsyncBridgeError, Bridge
    b = Bridge(max_pending=10_000)
    lane = b.lane("side")
    n = 300
    unbalanced, errors, futures = [], [], []

    async def first_step(i):
        # All of this runs before the job's first await: inside the pass on 3.12+.
        b.run_soon(quick())
        futures.append(b.submit(nap(0, i)))
        lane.run_soon(quick())
        b.configure(max_concurrency=50 + i % 3)
        for s in (b.stats(), lane.stats()):
            if s.accepted != s.completed + s.failed + s.timed_out + s.cancelled + s.pending \\
                    + s.running:
                unbalanced.append(repr(s))
        for call in (lambda: b.drain(1), lambda: b.run(quick(), timeout=1),
                     lambda: lane.run(quick(), timeout=1)):
            try:
                call()
            except AsyncBridgeError as exc:
                errors.append(type(exc).__name__)
        return i

    release = park(b)
    for i in range(n):
        assert b.run_soon(first_step(i))
    release.set()
    idle = b.drain(10)
    results = sorted(f.result(5) for f in futures)
    r = b.shutdown(5)
    verdict(idle=idle, unbalanced=unbalanced[:3], errors=len(errors),
            other_errors=sorted(set(errors) - {"AsyncBridgeError"}), results_ok=results ==
            list(range(n)), report=info(r), lane=counts(r.stats.lanes["side"]))
    """
)
def test_a_first_step_that_hands_off_configures_and_reads_stats_leaves_every_count_exact(
    outcome: Outcome,
) -> None:
    v = outcome.verdict
    c, lane = v["report"]["counts"], v["lane"]
    assert v["idle"] is True and v["results_ok"] is True, v
    assert v["unbalanced"] == [], v
    assert (v["errors"], v["other_errors"]) == (900, []), v
    # Default lane: 300 jobs, 300 run_soon and 300 submit from their first steps; lane: 300.
    assert (c["accepted"], c["completed"], c["failed"], c["cancelled"]) == (1200, 1200, 0, 0), c
    assert (lane["accepted"], lane["completed"]) == (300, 300), lane
    assert balanced(c) and v["report"]["clean"] is True, v
    assert_quiet(outcome)


@case(
    """
    from asyncbridge import Bridge
    b = Bridge()

    async def raises_at_once(kind):
        raise kind("in the first step")

    kinds = (SystemExit, KeyboardInterrupt, GeneratorExit, RuntimeError, asyncio.CancelledError)
    release = park(b)
    for kind in kinds:
        b.run_soon(raises_at_once(kind))
    futures = [b.submit(raises_at_once(kind)) for kind in kinds]
    for _ in range(5):
        b.run_soon(quick())
    release.set()
    idle = b.drain(5)
    seen = []
    for f in futures:
        try:
            f.result(5)
            seen.append("result")
        except concurrent.futures.CancelledError:
            seen.append("cancelled")
        except BaseException as exc:
            seen.append(type(exc).__name__)
    value = b.run(nap(0, 7), timeout=5)
    verdict(idle=idle, seen=seen, value=value, counts=counts(b.stats()))
    """
)
def test_a_first_step_raising_systemexit_keyboardinterrupt_or_generatorexit_is_counted_failed(
    outcome: Outcome,
) -> None:
    v = outcome.verdict
    c = v["counts"]
    assert v["idle"] is True and v["value"] == 7, v
    assert v["seen"] == [
        "SystemExit",
        "KeyboardInterrupt",
        "GeneratorExit",
        "RuntimeError",
        "cancelled",
    ], v
    assert (c["accepted"], c["failed"], c["cancelled"], c["completed"]) == (16, 8, 2, 6), c
    assert c["loop_running"] and balanced(c), c


@case(
    """
    from asyncbridge import Bridge
    b = Bridge()

    def callback(future):
        raise SystemExit(3)  # a done callback that exits, run in the loop thread

    release = park(b)
    f = b.submit(quick())
    f.add_done_callback(callback)
    for _ in range(5):
        b.run_soon(quick())
    release.set()
    idle = b.drain(3)
    s = b.stats()
    r = b.shutdown(1)
    verdict(idle=idle, counts=counts(s), report=info(r))
    """
)
def test_a_done_callback_raising_systemexit_in_a_first_step_loses_no_other_job(
    outcome: Outcome,
) -> None:
    v = outcome.verdict
    c = v["counts"]
    assert v["idle"] is True, v
    assert (c["accepted"], c["completed"], c["running"]) == (6, 6, 0), c
    assert v["report"]["abandoned"] == 0 and v["report"]["clean"] is True, v


# ---------------------------------------------------------------------------------------------
# Cancellation in and around the first step
# ---------------------------------------------------------------------------------------------


@case(
    """
    from asyncbridge import Bridge
    b = Bridge()
    holder = {}
    returned = {}

    async def cancel_task_then_wait():
        asyncio.current_task().cancel()
        await asyncio.sleep(60)

    async def cancel_task_then_return():
        asyncio.current_task().cancel()
        return "done anyway"

    async def cancel_future_then_wait(i):
        returned[i] = holder[i].cancel()
        await asyncio.sleep(60)

    async def cancel_future_then_return(i):
        returned[i] = holder[i].cancel()
        return i

    release = park(b)
    futures = []
    for i in range(40):
        kind = i % 4
        if kind == 0:
            f = b.submit(cancel_task_then_wait())
        elif kind == 1:
            f = b.submit(cancel_task_then_return())
        elif kind == 2:
            f = b.submit(cancel_future_then_wait(i))
        else:
            f = b.submit(cancel_future_then_return(i))
        holder[i] = f
        futures.append(f)
    b.run_soon(cancel_task_then_wait())  # one with no future
    release.set()
    idle = b.drain(5)
    states = []
    for f in futures:
        if f.cancelled():
            states.append("cancelled")
        else:
            states.append(repr(f.result(0)))
    verdict(idle=idle, states=states, returned=sorted(set(returned.values())),
            counts=counts(b.stats()))
    """
)
def test_a_job_cancelling_its_own_task_or_future_in_its_first_step_is_counted_once(
    outcome: Outcome,
) -> None:
    v = outcome.verdict
    c = v["counts"]
    assert v["idle"] is True, v
    # A job that returns despite the cancel carries its result, as with asyncio.
    expected = [["cancelled", repr("done anyway"), "cancelled", repr(i)][i % 4] for i in range(40)]
    assert v["states"] == expected, v
    assert v["returned"] == [True], v
    assert (c["accepted"], c["cancelled"], c["completed"], c["running"]) == (41, 21, 20, 0), c
    assert balanced(c), c
    assert_quiet(outcome)


@case(
    """
    from asyncbridge import Bridge
    b = Bridge(max_concurrency=1)
    n = 40
    started = [threading.Event() for _ in range(n)]

    async def slow_first_step(i):
        started[i].set()
        time.sleep(0.003)  # the first step lasts: cancel() lands while the task is being made
        await asyncio.sleep(60)

    futures = [b.submit(slow_first_step(i)) for i in range(n)]
    answers = []
    for i, f in enumerate(futures):
        assert started[i].wait(10)
        answers.append(f.cancel())
    idle = b.drain(10)
    verdict(idle=idle, answers=answers, cancelled=sum(f.cancelled() for f in futures),
            counts=counts(b.stats()))
    """
)
def test_cancel_landing_during_the_first_step_before_the_task_is_known_still_cancels(
    outcome: Outcome,
) -> None:
    v = outcome.verdict
    c = v["counts"]
    assert v["idle"] is True, v
    assert v["answers"] == [True] * 40 and v["cancelled"] == 40, v
    assert (c["accepted"], c["cancelled"], c["running"]) == (40, 40, 0) and balanced(c), c


# ---------------------------------------------------------------------------------------------
# Context variables, the loop, asyncio's task machinery
# ---------------------------------------------------------------------------------------------


@case(
    """
    import contextvars
    from asyncbridge import Bridge
    b = Bridge(max_pending=5000)
    who = contextvars.ContextVar("who", default="nobody")
    leaked = contextvars.ContextVar("leaked", default=None)
    wrong = []

    async def job(i):
        if who.get() != f"caller-{i}" or leaked.get() is not None:
            wrong.append((i, who.get(), leaked.get()))
        who.set(f"job-{i}")
        leaked.set(i)
        await asyncio.sleep(0)
        if who.get() != f"job-{i}" or leaked.get() != i:
            wrong.append((i, "after await", who.get(), leaked.get()))

    async def quick_job(i):
        if who.get() != f"caller-{i}" or leaked.get() is not None:
            wrong.append((i, who.get(), leaked.get()))
        leaked.set(-i)  # ends in its first step

    n = 600
    release = park(b)
    for i in range(n):
        who.set(f"caller-{i}")
        b.run_soon(job(i) if i % 2 else quick_job(i))
    who.set("main")
    release.set()
    idle = b.drain(10)
    fresh = []

    def from_a_fresh_thread():
        async def look():
            fresh.append((who.get(), leaked.get()))
        b.run(look(), timeout=5)

    t = threading.Thread(target=from_a_fresh_thread)
    t.start()
    t.join(10)
    verdict(idle=idle, wrong=wrong[:5], wrong_count=len(wrong), fresh=fresh,
            main=(who.get(), leaked.get()), counts=counts(b.stats()))
    """
)
def test_context_variables_never_leak_between_jobs_started_in_one_pass(outcome: Outcome) -> None:
    v = outcome.verdict
    c = v["counts"]
    assert v["idle"] is True, v
    assert v["wrong_count"] == 0, v
    assert v["fresh"] == [["nobody", None]], v  # a caller with no values set sees none
    assert v["main"] == ["main", None], v
    assert (c["accepted"], c["completed"]) == (601, 601) and balanced(c), c


@case(
    """
    from asyncbridge import Bridge
    b = Bridge(max_pending=5000)
    n = 600
    same_task, timed = [], []

    async def stopper():
        asyncio.get_running_loop().stop()  # in the first step, inside the pass on 3.12+

    async def job(i):
        first = asyncio.current_task()
        try:
            async with asyncio.timeout(0.01):
                await asyncio.sleep(5)
        except TimeoutError:
            timed.append(i)
        same_task.append(first is asyncio.current_task() and first is not None)

    release = park(b)
    for i in range(n):
        b.run_soon(stopper() if i in (5, 300) else job(i))
    release.set()
    idle = b.drain(10)
    value = b.run(nap(0, 3), timeout=5)
    r = b.shutdown(5)
    verdict(idle=idle, value=value, same=sum(same_task), timed=len(timed), report=info(r))
    """
)
def test_a_loop_stop_and_asyncio_timeout_in_first_steps_lose_nothing(outcome: Outcome) -> None:
    v = outcome.verdict
    c = v["report"]["counts"]
    assert v["idle"] is True and v["value"] == 3, v
    assert (v["same"], v["timed"]) == (598, 598), v
    assert (c["accepted"], c["completed"], c["running"]) == (601, 601, 0), c
    assert v["report"]["clean"] is True and balanced(c), v
    assert len(outcome.log_lines("called loop.stop()")) == 2, outcome.logs


# ---------------------------------------------------------------------------------------------
# task_timeout with first steps that end, and ones that never do
# ---------------------------------------------------------------------------------------------


@case(
    """
    from asyncbridge import Bridge
    b = Bridge(max_pending=5000)
    lane = b.lane("timed", task_timeout=0.05, max_concurrency=None, max_pending=5000)
    blocking = b.lane("blocking", task_timeout=0.05, max_concurrency=None)

    async def blocks_then_ends():
        time.sleep(0.08)  # past the timeout, but it ends in this very step
        return 1

    release = park(b)
    for i in range(900):
        lane.run_soon(quick() if i % 3 == 0 else forever() if i % 3 == 1 else nap(0.001))
    release.set()
    idle = b.drain(10)
    for _ in range(3):
        blocking.run_soon(blocks_then_ends())
    idle = b.drain(10) and idle
    verdict(idle=idle, lane=counts(lane.stats()), blocking=counts(blocking.stats()),
            tasks=len(b._rt.tasks), expired=len(b._rt.expired))
    """
)
def test_task_timeout_times_out_only_the_jobs_that_never_end_their_first_step(
    outcome: Outcome,
) -> None:
    v = outcome.verdict
    c = v["lane"]
    assert v["idle"] is True, v
    assert (c["accepted"], c["completed"], c["timed_out"], c["running"]) == (900, 600, 300, 0), c
    blocking = v["blocking"]  # a first step past the timeout that ends in that step: completed
    assert (blocking["accepted"], blocking["completed"], blocking["timed_out"]) == (3, 3, 0), v
    assert (v["tasks"], v["expired"]) == (0, 0), v
    assert balanced(c), c


# ---------------------------------------------------------------------------------------------
# Retries, limits changing, batchers: the queued refill pass
# ---------------------------------------------------------------------------------------------


@case(
    """
    import asyncbridge
    from asyncbridge import Bridge
    b = Bridge(max_pending=20_000)
    lane = b.lane("one", max_concurrency=1, max_pending=20_000)
    n = 10_000
    tries = collections.Counter()

    async def refused(i):
        tries[i] += 1
        if i % 2 or tries[i] > 1:  # odd: refused every time; even: the second try succeeds
            if i % 2:
                raise ConnectionRefusedError("nobody listens")
            return i
        raise ConnectionRefusedError("nobody listens yet")

    release = park(b)
    for i in range(n):
        lane.run_soon(asyncbridge.retrying(refused, i, attempts=2, budget=10))
    release.set()
    idle = b.drain(60)
    verdict(idle=idle, lane=counts(lane.stats()), retries=lane.stats().retries,
            busy=b._rt.lanes["one"].busy, tries=sum(tries.values()))
    """,
    timeout=90,
)
def test_ten_thousand_retries_failing_at_once_in_a_one_slot_lane_never_recurse_or_stall(
    outcome: Outcome,
) -> None:
    v = outcome.verdict
    c = v["lane"]
    assert v["idle"] is True, v
    assert (c["accepted"], c["completed"], c["failed"], c["running"]) == (
        10_000,
        5_000,
        5_000,
        0,
    ), c
    assert (v["retries"], v["tries"], v["busy"]) == (10_000, 20_000, 0), v
    assert not outcome.log_lines("RecursionError"), outcome.logs


@case(
    """
    from asyncbridge import Bridge
    b = Bridge(max_pending=10_000, max_concurrency=None)
    n = 5000
    now = [0]

    async def job(i):
        now[0] += 1
        if i % 2:
            await asyncio.sleep(0.001)
        now[0] -= 1

    stop = threading.Event()

    def flip():
        limits = itertools.cycle([1, 3, None, 2, 500, 7])
        while not stop.is_set():
            b.configure(max_concurrency=next(limits))
            time.sleep(0.0005)

    release = park(b)
    for i in range(n):
        b.run_soon(job(i))
    t = threading.Thread(target=flip)
    t.start()
    release.set()
    time.sleep(0.3)
    stop.set()
    t.join(5)
    b.configure(max_concurrency=4)
    idle = b.drain(30)
    verdict(idle=idle, busy=b._rt.busy, now=now[0], counts=counts(b.stats()))
    """,
    timeout=60,
)
def test_max_concurrency_flipping_while_passes_are_queued_starts_every_job_once(
    outcome: Outcome,
) -> None:
    v = outcome.verdict
    c = v["counts"]
    assert v["idle"] is True, v
    assert (c["accepted"], c["completed"], c["running"], c["pending"]) == (5000, 5000, 0, 0), c
    assert (v["busy"], v["now"]) == (0, 0), v


@case(
    """
    from asyncbridge import Bridge
    b = Bridge(max_pending=20_000)
    lane = b.lane("mix", max_concurrency=2, max_pending=20_000)
    flushed = collections.Counter()

    def flusher(tag):
        async def flush(items):
            flushed[tag] += len(items)
            if len(items) % 2:
                await asyncio.sleep(0)
        return flush

    made_on_loop = []

    async def makes_a_batcher(i):
        batcher = b.batcher(flusher(f"loop{i}"), max_size=3, max_delay=0.001, lane=lane)
        for k in range(10):
            batcher.add(k)
        made_on_loop.append(i)

    release = park(b)
    for i in range(500):
        lane.run_soon(quick() if i % 50 else makes_a_batcher(i))
    release.set()
    batchers = []
    for j in range(3):
        batcher = b.batcher(flusher(f"main{j}"), max_size=7, max_delay=0.002, lane=lane)
        batchers.append(batcher)
        for k in range(300):
            batcher.add(k)
            if k % 100 == 0:
                lane.run_soon(nap(0))
    idle = b.drain(20)
    verdict(idle=idle, flushed=dict(flushed), made=len(made_on_loop), lane=counts(lane.stats()))
    """,
    timeout=60,
)
def test_batchers_attached_while_jobs_end_flush_every_item_and_count_it(outcome: Outcome) -> None:
    v = outcome.verdict
    c = v["lane"]
    assert v["idle"] is True and v["made"] == 10, v
    assert v["flushed"] == {
        **{f"loop{i}": 10 for i in range(0, 500, 50)},
        **{f"main{j}": 300 for j in range(3)},
    }, v
    # 500 jobs, 9 naps, 10 x 10 + 3 x 300 items.
    assert (c["accepted"], c["completed"], c["running"]) == (1509, 1509, 0) and balanced(c), c


# ---------------------------------------------------------------------------------------------
# Shutdown with work waiting in many chunks
# ---------------------------------------------------------------------------------------------


@case(
    """
    from asyncbridge import Bridge
    from asyncbridge._shutdown import SHUTDOWN_MARGIN
    quickly = Bridge(max_pending=20_000, max_concurrency=None)
    hanging = Bridge(max_pending=20_000, max_concurrency=None)
    limited = Bridge(max_pending=20_000, max_concurrency=100)
    n = 10_000
    for b, make in ((quickly, quick), (hanging, forever), (limited, lambda: nap(0.3))):
        release = park(b)
        for _ in range(n):
            assert b.run_soon(make())
        release.set()
    reports = {}
    for name, b, deadline in (("quick", quickly, 10), ("hanging", hanging, 1),
                              ("limited", limited, 1)):
        started = time.monotonic()
        r = b.shutdown(deadline)
        reports[name] = dict(info(r), took=time.monotonic() - started,
                             names=len(r.cancelled_names), within=time.monotonic() - started
                             < deadline + SHUTDOWN_MARGIN + 1.0)
    verdict(reports=reports)
    """,
    timeout=60,
)
def test_shutdown_with_ten_thousand_jobs_waiting_in_chunks_counts_all_within_its_deadline(
    outcome: Outcome,
) -> None:
    reports = outcome.verdict["reports"]
    q, h, lim = reports["quick"], reports["hanging"], reports["limited"]
    assert q["clean"] is True and q["counts"]["completed"] == 10_000, q
    assert h["counts"]["cancelled"] == 10_000 and h["names"] == 10_000, h
    assert h["abandoned"] == 0 and balanced(h["counts"]), h
    c = lim["counts"]
    assert c["accepted"] == 10_000 and c["completed"] + c["cancelled"] == 10_000, lim
    assert c["completed"] >= 100 and lim["names"] == c["cancelled"], lim  # at least 1 round
    assert lim["abandoned"] == 0 and balanced(c), lim
    for r in (q, h, lim):
        assert r["within"] is True and r["final"] is not False, r
    assert len(report_lines(outcome)) == 3, report_lines(outcome)


@case(
    """
    from asyncbridge import Bridge
    b = Bridge(max_pending=5000)
    interim = []

    async def shuts_down():
        interim.append(b.shutdown(1))  # from the loop thread, in a first step: interim report

    release = park(b)
    for i in range(1000):
        b.run_soon(shuts_down() if i == 200 else quick())
    release.set()
    time.sleep(0.2)
    late = b.run_soon(quick())
    r = b.shutdown(5)
    verdict(interim=[x.final for x in interim], late=late, report=info(r))
    """
)
def test_shutdown_from_a_first_step_closes_admission_and_the_real_one_counts_all(
    outcome: Outcome,
) -> None:
    v = outcome.verdict
    c = v["report"]["counts"]
    assert v["interim"] == [False] and v["late"] is False, v
    assert (c["accepted"], c["completed"], c["dropped_closed"]) == (1000, 1000, 1), c
    assert v["report"]["abandoned"] == 0 and balanced(c), v


# ---------------------------------------------------------------------------------------------
# Two bridges, fork, task factories
# ---------------------------------------------------------------------------------------------


@case(
    """
    from asyncbridge import Bridge
    a = Bridge(max_pending=5000)
    other = Bridge(max_pending=5000)

    async def on_other(i):
        a.run_soon(quick())  # back to the first bridge, from the other loop
        return i

    async def on_a(i):
        if i % 2:
            assert other.run_soon(on_other(i))
        else:
            assert await asyncio.wrap_future(other.submit(on_other(i))) == i

    release = park(a)
    for i in range(200):
        a.run_soon(on_a(i))
    release.set()
    idle = a.drain(20) and other.drain(5) and a.drain(5)
    verdict(idle=idle, a=counts(a.stats()), other=counts(other.stats()))
    """
)
def test_a_first_step_using_another_bridge_counts_both_exactly(outcome: Outcome) -> None:
    v = outcome.verdict
    assert v["idle"] is True, v
    assert (v["a"]["accepted"], v["a"]["completed"], v["a"]["failed"]) == (400, 400, 0), v
    assert (v["other"]["accepted"], v["other"]["completed"]) == (200, 200), v
    assert_quiet(outcome)


@case(
    """
    from asyncbridge import Bridge
    b = Bridge(max_pending=5000)
    release = park(b)
    for _ in range(700):
        b.run_soon(quick())
    release.set()
    assert b.drain(10)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        for _ in range(300):
            b.run_soon(quick())
        ok = b.drain(10)
        rep = b.shutdown(5)
        os.write(w, json.dumps({"ok": ok, "counts": counts(rep.stats)}).encode())
        os._exit(0)
    os.close(w)
    data = b""
    while chunk := os.read(r, 65536):
        data += chunk
    os.waitpid(pid, 0)
    for _ in range(100):
        b.run_soon(quick())
    parent_idle = b.drain(10)
    verdict(child=json.loads(data), parent_idle=parent_idle, parent=counts(b.stats()))
    """
)
def test_a_child_forked_after_eager_jobs_counts_only_its_own(outcome: Outcome) -> None:
    v = outcome.verdict
    child_counts = v["child"]["counts"]
    assert v["child"]["ok"] is True and v["parent_idle"] is True, v
    assert (child_counts["accepted"], child_counts["completed"]) == (300, 300), v
    assert (v["parent"]["accepted"], v["parent"]["completed"]) == (800, 800), v


@pytest.mark.skipif(not EAGER, reason="asyncio.eager_task_factory is Python 3.12+")
@case(
    """
    from asyncbridge import Bridge
    b = Bridge(max_pending=5000)
    loop = b.get_loop()
    lane = b.lane("side")
    eager_loop(b)
    for _ in range(100):
        b.run_soon(quick())
        lane.run_soon(quick())
    for _ in range(5):
        b.run_soon(nap(0.01))
    idle = b.drain(5)
    verdict(idle=idle, tasks=len(b._rt.tasks), lane_of=len(b._rt.lane_of),
            counts=counts(b.stats()))
    """
)
def test_with_an_eager_task_factory_ended_jobs_leave_no_task_registered(outcome: Outcome) -> None:
    v = outcome.verdict
    c = v["counts"]
    assert v["idle"] is True, v
    assert (c["accepted"], c["completed"]) == (205, 205), c
    assert (v["tasks"], v["lane_of"]) == (0, 0), v


@pytest.mark.skipif(not EAGER, reason="asyncio.eager_task_factory is Python 3.12+")
@case(
    """
    from asyncbridge import Bridge
    b = Bridge(max_pending=5000)
    loop = eager_loop(b)
    flushed = []

    async def flush(items):
        flushed.extend(items)  # ends in its first step

    batcher = b.batcher(flush, max_size=2, max_delay=0.01)
    for i in range(10):
        batcher.add(i)
    idle = b.drain(3)
    s = b.stats()
    r = b.shutdown(1)
    verdict(idle=idle, flushed=sorted(flushed), counts=counts(s), report=info(r))
    """
)
def test_with_an_eager_task_factory_a_flush_ending_at_once_is_counted(outcome: Outcome) -> None:
    v = outcome.verdict
    c = v["counts"]
    assert v["flushed"] == list(range(10)), v
    assert v["idle"] is True, v
    assert (c["accepted"], c["completed"], c["running"]) == (10, 10, 0), c
    assert v["report"]["abandoned"] == 0, v


@pytest.mark.skipif(not EAGER, reason="asyncio.eager_task_factory is Python 3.12+")
@case(
    """
    from asyncbridge import Bridge
    b = Bridge()
    loop = eager_loop(b)
    flushed = []

    async def flush(items):
        flushed.append(len(items))  # ends in its first step

    batcher = b.batcher(flush, max_size=1, max_delay=30)
    go = threading.Event()

    async def producer():
        while not go.is_set():
            await asyncio.sleep(0.005)
        for i in range(400):
            batcher.add(i)
        await asyncio.sleep(0.2)

    b.run_soon(producer())
    got = []
    drainer = threading.Thread(target=lambda: got.append(b.drain(10)))
    drainer.start()
    time.sleep(0.1)  # the drain waits, for the producer
    go.set()
    drainer.join(15)
    s = b.stats()
    q = batcher._q
    verdict(idle=got, flushed=sum(flushed), counts=counts(s), flushing=q.flushing,
            busy=q.lane.busy, recursion=logs_contain("RecursionError"))
    """
)
def test_eager_flushes_while_a_drain_waits_start_one_after_another_without_recursing(
    outcome: Outcome,
) -> None:
    # Each flush that ended in its first step started the next inside it (a drain waiting
    # makes the rest due): one level per batch, until RecursionError left items running.
    v = outcome.verdict
    c = v["counts"]
    assert v["idle"] == [True] and v["flushed"] == 400, v
    assert (c["accepted"], c["completed"], c["running"]) == (401, 401, 0), c
    assert (v["flushing"], v["busy"], v["recursion"]) == (0, 0, False), v


# ---------------------------------------------------------------------------------------------
# Logs: qualnames only, from failures in first steps
# ---------------------------------------------------------------------------------------------


@case(
    """
    from asyncbridge import Bridge
    b = Bridge()
    errors = []
    b.configure(on_error=lambda exc, name: errors.append(name))

    class Secretive:
        def __repr__(self):
            return "SECRET-IN-REPR"

    async def fails_at_once(token, thing):
        raise ValueError("plain text")

    async def fails_later(token, thing):
        await asyncio.sleep(0)
        raise ValueError("plain text")

    release = park(b)
    for i in range(6):
        b.run_soon((fails_at_once if i % 2 else fails_later)("SECRET-TOKEN", Secretive()))
    release.set()
    idle = b.drain(5)
    r = b.shutdown(5)
    verdict(idle=idle, errors=sorted(set(errors)), n=len(errors), report=info(r))
    """
)
def test_first_step_failures_are_logged_by_qualname_never_by_argument(outcome: Outcome) -> None:
    v = outcome.verdict
    c = v["report"]["counts"]
    assert v["idle"] is True and (c["accepted"], c["failed"]) == (6, 6), v
    assert v["n"] == 6 and v["errors"] == ["fails_at_once", "fails_later"], v
    assert not [line for line in outcome.stdout.splitlines() if "SECRET" in line]
    assert outcome.log_lines("fails_at_once") and outcome.log_lines("fails_later"), outcome.logs


@case(
    """
    from asyncbridge import Bridge
    made = []

    class Tracing(asyncio.SelectorEventLoop):
        def create_task(self, coro, **kwargs):
            made.append(getattr(coro, "__qualname__", "?"))
            return super().create_task(coro, **kwargs)

    b = Bridge(loop_factory=Tracing)
    for _ in range(5):
        b.run_soon(quick())
        b.run_soon(nap(0.001))
    idle = b.drain(5)
    verdict(idle=idle, jobs=made.count("_job"), counts=counts(b.stats()))
    """
)
def test_a_loop_whose_class_overrides_create_task_makes_every_jobs_task(outcome: Outcome) -> None:
    v = outcome.verdict
    c = v["counts"]
    assert v["idle"] is True and (c["accepted"], c["completed"]) == (10, 10), v
    assert v["jobs"] == 10, v


@case(
    """
    from asyncbridge import Bridge
    b = Bridge()
    loop = b.get_loop()
    made = itertools.count(1)

    def factory(loop, coro, **kwargs):
        if next(made) % 3 == 0:
            raise RuntimeError("the factory refuses")
        return asyncio.Task(coro, loop=loop, **kwargs)

    loop.call_soon_threadsafe(loop.set_task_factory, factory)
    deadline = time.monotonic() + 5
    while loop.get_task_factory() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    release = park(b)
    for _ in range(9):
        b.run_soon(nap(0.001))
    release.set()
    idle = b.drain(3)
    s = b.stats()
    r = b.shutdown(1)
    verdict(idle=idle, counts=counts(s), report=info(r))
    """
)
def test_a_task_factory_that_raises_fails_its_job_and_starts_the_others(outcome: Outcome) -> None:
    v = outcome.verdict
    c = v["counts"]
    assert v["idle"] is True, v
    # Three refusals are failures; the six others complete.
    assert (c["accepted"], c["completed"], c["failed"], c["running"]) == (9, 6, 3, 0), c
    assert v["report"]["abandoned"] == 0, v


@case(
    """
    from asyncbridge import Bridge
    from asyncbridge._shutdown import SHUTDOWN_MARGIN
    b = Bridge(max_pending=5000, max_concurrency=None)

    async def blocks_the_loop():
        time.sleep(3)  # in its first step: inside the pass on 3.12+

    release = park(b)
    b.run_soon(blocks_the_loop())
    for _ in range(199):
        b.run_soon(quick())
    release.set()
    time.sleep(0.2)
    started = time.monotonic()
    r = b.shutdown(0.5)
    took = time.monotonic() - started
    time.sleep(4)  # the loop thread unblocks, starts the rest of its chunk, cleans up
    later = counts(b.stats())
    verdict(took=took, within=took < 0.5 + SHUTDOWN_MARGIN + 1.0, report=info(r), later=later,
            alive=b._rt.thread.is_alive())
    """
)
def test_shutdown_while_a_first_step_blocks_the_loop_keeps_its_deadline_and_counts(
    outcome: Outcome,
) -> None:
    v = outcome.verdict
    c, later = v["report"]["counts"], v["later"]
    assert v["within"] is True, v
    # The first chunk (128) was taken; the blocked job holds the pass: all 128 still running.
    assert (c["accepted"], c["running"], c["cancelled"]) == (200, 128, 72) and balanced(c), c
    assert v["report"]["abandoned"] == 128, v
    assert balanced(later) and later["running"] == 0, later
    assert later["completed"] + later["cancelled"] == 200, later
    assert v["alive"] is False, v


@case(
    """
    from asyncbridge import Bridge
    from asyncbridge import _scheduler
    b = Bridge(max_pending=5000)
    lane = b.lane("outer", max_concurrency=4)
    seen = []

    async def inner(i):
        # A task the job spawns: it holds no slot, and it is not the lane's job.
        seen.append(_scheduler.current_lane() is None)
        lane.run_soon(quick())
        await asyncio.sleep(0)
        return i

    async def job(i):
        loop = asyncio.get_running_loop()
        if EAGER:
            eager = asyncio.Task(inner(i), loop=loop, eager_start=True)
        else:
            eager = loop.create_task(inner(i))
        mine = _scheduler.current_lane()
        seen.append(mine is not None and mine.name == "outer")
        assert await eager == i

    release = park(b)
    for i in range(300):
        lane.run_soon(job(i))
    release.set()
    idle = b.drain(10)
    verdict(idle=idle, seen=seen.count(True), n=len(seen), lane=counts(lane.stats()),
            tasks=len(b._rt.tasks))
    """
)
def test_a_first_step_starting_its_own_eager_task_keeps_lanes_and_counts_apart(
    outcome: Outcome,
) -> None:
    v = outcome.verdict
    c = v["lane"]
    assert v["idle"] is True, v
    assert (v["seen"], v["n"]) == (600, 600), v
    assert (c["accepted"], c["completed"], c["running"]) == (600, 600, 0), c
    assert v["tasks"] == 0, v


@case(
    """
    from asyncbridge import Bridge
    b = Bridge(max_concurrency=1)
    own = b.lane("own", max_concurrency=1)
    inherits = b.lane("inherits")
    for target in (b, own, inherits):
        target.run_soon(forever())  # holds the only slot
    time.sleep(0.2)
    for target in (b, own, inherits):
        for _ in range(5):
            target.run_soon(nap(0.001))
    time.sleep(0.2)
    own.configure(max_concurrency=10)
    b.configure(max_concurrency=10)
    deadline = time.monotonic() + 3
    done = lambda: [b.stats().lanes[n].completed for n in ("default", "own", "inherits")]
    while done() != [5, 5, 5] and time.monotonic() < deadline:
        time.sleep(0.01)
    verdict(completed=done())
    """
)
def test_raising_a_lanes_max_concurrency_starts_its_waiting_work_at_once(outcome: Outcome) -> None:
    assert outcome.verdict["completed"] == [5, 5, 5], outcome.verdict


@case(
    """
    from asyncbridge import Bridge
    b = Bridge(max_pending=5000, max_concurrency=None)

    async def blocks_the_loop():
        time.sleep(3)

    release = park(b)
    b.run_soon(blocks_the_loop())
    for _ in range(9):
        b.run_soon(quick())
    release.set()
    time.sleep(0.2)
    r = b.shutdown(0.2, log=False)
    verdict(report=info(r))
    """
)
def test_a_shutdown_report_names_every_job_it_abandons_in_a_blocked_pass(
    outcome: Outcome,
) -> None:
    r = outcome.verdict["report"]
    assert r["abandoned"] == 10, r
    assert sorted(r["abandoned_names"]) == ["blocks_the_loop"] + ["quick"] * 9, r
