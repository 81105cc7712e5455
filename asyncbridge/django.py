"""A Django Tasks backend that runs tasks in the process that enqueues them, on the bridge.

In ``settings.py``::

    TASKS = {"default": {"BACKEND": "asyncbridge.django.AsyncBridgeBackend"}}

Django 6's ``django.tasks`` (and the ``django-tasks`` backport for Django 5.2, used when
``django.tasks`` does not exist) gives an app ``@task`` and ``.enqueue()``, but no worker.
:class:`AsyncBridgeBackend` is the worker: ``enqueue()`` records the task and hands it to the
bridge of the calling process, then returns at once. An ``async def`` task runs on the bridge
loop (so :func:`asyncbridge.aiohttp.post_json` works in it); a plain ``def`` task runs in a small
pool of threads that the bridge owns, and is drained with it. Under gunicorn the hooks of
:mod:`asyncbridge.gunicorn` start and drain the bridge; under ``manage.py runserver`` and in
scripts it starts on first use and drains at exit.

What that buys and what it does not: the task runs a few microseconds after ``enqueue()``
returns, without a broker, and within the worker's drain deadline at exit; it is lost if the
process is killed, and never retried. When tasks must survive a crash or a deploy, switch the
``BACKEND`` to a durable one (a database or a broker backend); the code that enqueues does not
change.

``OPTIONS``:
    ``THREADS`` (int, default 4): threads for plain ``def`` tasks, per process.
    ``MAX_RESULTS`` (int, default 1000): results kept for :meth:`~AsyncBridgeBackend.get_result`,
    per process, oldest dropped first.
    ``EAGER`` (bool, default False): ``enqueue()`` returns only once the task has finished, on
    the bridge as usual; for test settings.
    ``EAGER_TIMEOUT`` (float, default 10): how long an eager ``enqueue()`` waits.

The bridge's own options apply: a task refused because the backlog is at ``max_pending`` (or
the bridge is shut down) is counted as dropped, and ``enqueue()`` returns its result with status
``FAILED`` and the reason in ``errors`` (with ``on_full="raise"`` it raises
:class:`~asyncbridge.BacklogFull` instead). A task that raises is counted as failed; one still
running at the drain deadline is cancelled, counted, named in the shutdown report, and its
result becomes ``FAILED``.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextvars
import dataclasses
import hashlib
import inspect
import itertools
import logging
import os
import queue
import threading
import traceback
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar, cast

from django.core.exceptions import ImproperlyConfigured  # type: ignore[import-untyped]
from django.utils import timezone  # type: ignore[import-untyped]
from django.utils.crypto import get_random_string  # type: ignore[import-untyped]

from ._api import default_bridge
from ._bridge import Bridge
from ._errors import BacklogFull, BridgeClosed

if TYPE_CHECKING:
    from types import CoroutineType

    from django_tasks import TaskContext, TaskResult, TaskResultStatus
    from django_tasks.backends.base import BaseTaskBackend
    from django_tasks.base import Task, TaskError
    from django_tasks.exceptions import TaskResultDoesNotExist
    from django_tasks.signals import task_enqueued, task_finished, task_started
    from django_tasks.utils import normalize_json
else:
    try:  # Django 6
        from django.tasks import TaskContext, TaskResult, TaskResultStatus
        from django.tasks.backends.base import BaseTaskBackend
        from django.tasks.base import Task, TaskError
        from django.tasks.exceptions import TaskResultDoesNotExist
        from django.tasks.signals import task_enqueued, task_finished, task_started
        from django.utils.json import normalize_json
    except ImportError:  # Django 5.2 with the django-tasks backport
        from django_tasks import TaskContext, TaskResult, TaskResultStatus
        from django_tasks.backends.base import BaseTaskBackend
        from django_tasks.base import Task, TaskError
        from django_tasks.exceptions import TaskResultDoesNotExist
        from django_tasks.signals import task_enqueued, task_finished, task_started
        from django_tasks.utils import normalize_json

__all__ = ["AsyncBridgeBackend"]

T = TypeVar("T")

_logger = logging.getLogger("asyncbridge")

_DEFAULTS: dict[str, Any] = {
    "THREADS": 4,
    "MAX_RESULTS": 1000,
    "EAGER": False,
    "EAGER_TIMEOUT": 10.0,
}


class AsyncBridgeBackend(BaseTaskBackend):
    """Runs each enqueued task on the bridge of the process that enqueued it.

    See the module's documentation for the settings. Results live in the memory of that
    process: :meth:`get_result` finds the ones it enqueued (the newest ``MAX_RESULTS``), and no
    other process can, hence ``supports_get_result = False``.

    Args:
        alias: The backend's name in ``TASKS``.
        params: Its settings (``QUEUES``, ``OPTIONS``).

    Raises:
        ImproperlyConfigured: An unknown option or a value of the wrong type.
    """

    supports_async_task = True
    supports_defer = False  # no scheduler: a task runs as soon as the bridge gets to it
    supports_priority = False  # first come, first served
    supports_get_result = False  # results are in this process's memory only

    def __init__(self, alias: str, params: dict[str, Any]) -> None:
        super().__init__(alias, params)
        options = {**_DEFAULTS, **self.options}
        unknown = sorted(set(options) - set(_DEFAULTS))
        if unknown:
            raise ImproperlyConfigured(
                f"TASKS[{alias!r}]['OPTIONS']: unknown option(s) {', '.join(unknown)}; "
                f"AsyncBridgeBackend takes {', '.join(sorted(_DEFAULTS))}"
            )
        self._threads = _option_int(alias, options, "THREADS", minimum=1)
        self._max_results = _option_int(alias, options, "MAX_RESULTS", minimum=0)
        eager = options["EAGER"]
        if not isinstance(eager, bool):
            raise ImproperlyConfigured(f"TASKS[{alias!r}]['OPTIONS']['EAGER'] must be a bool")
        self._eager = eager
        eager_timeout = options["EAGER_TIMEOUT"]
        if isinstance(eager_timeout, bool) or not isinstance(eager_timeout, int | float):
            raise ImproperlyConfigured(
                f"TASKS[{alias!r}]['OPTIONS']['EAGER_TIMEOUT'] must be a number of seconds"
            )
        self._eager_timeout = float(eager_timeout)

    def enqueue(self, task: Task[Any, T], args: Any, kwargs: Any) -> TaskResult[T]:
        """Record the task and hand it to this process's bridge; return at once.

        Args:
            task: The task.
            args: Its positional arguments (JSON-serialisable, as for every backend).
            kwargs: Its keyword arguments.

        Returns:
            A snapshot of the task's result: ``READY`` when accepted (call ``refresh()`` for
            news, in this process), ``FAILED`` when the bridge refused it (``errors`` says why).
            With ``EAGER``, the finished result.

        Raises:
            django.tasks.exceptions.InvalidTask: The backend cannot run this task (Django's
                checks; ``django_tasks.exceptions.InvalidTaskError`` with the backport).
            BacklogFull: The backlog is full and the bridge's ``on_full`` is ``"raise"``.
            TimeoutError: ``EAGER`` and the task did not finish within ``EAGER_TIMEOUT``.
        """
        self.validate_task(task)
        store = _store(self.alias, self._max_results)
        result: TaskResult[T] = TaskResult(
            task=task,
            id=store.new_id(),
            status=cast(TaskResultStatus, TaskResultStatus.READY),
            enqueued_at=timezone.now(),
            started_at=None,
            last_attempted_at=None,
            finished_at=None,
            args=args,
            kwargs=kwargs,
            backend=self.alias,
            errors=[],
            worker_ids=[],
        )
        bridge = default_bridge()
        entry = store.add(result, bridge, eager=self._eager)
        task_enqueued.send_robust(type(self), task_result=result)
        coro: CoroutineType[Any, Any, None]
        if inspect.iscoroutinefunction(task.func):
            coro = cast("CoroutineType[Any, Any, None]", _run_async(type(self), store, entry))
        else:
            coro = cast(
                "CoroutineType[Any, Any, None]", _run_sync(type(self), store, entry, self._threads)
            )
        coro.__qualname__ = task.module_path  # how reports and logs name it
        try:
            accepted = bridge.run_soon(coro)
        except BacklogFull as exc:  # on_full="raise": counted as dropped; tell the caller too
            store.finish_failed(type(self), entry, exc)
            raise
        if not accepted:
            store.finish_failed(type(self), entry, _refusal(bridge))
        elif entry.done is not None and not bridge.in_loop_thread():
            if not entry.done.wait(self._eager_timeout):
                raise TimeoutError(
                    f"EAGER enqueue(): {task.module_path} did not finish within "
                    f"{self._eager_timeout:g}s (OPTIONS['EAGER_TIMEOUT'])"
                )
        return store.snapshot(entry.result)

    def get_result(self, result_id: str) -> TaskResult[Any]:
        """A snapshot of a result enqueued by this process, while it is among the newest kept.

        Raises:
            django.tasks.exceptions.TaskResultDoesNotExist: No such result in this process
                (enqueued elsewhere, too old, or never).
        """
        store = _store(self.alias, self._max_results)
        result = store.get(result_id)
        if result is None:
            raise TaskResultDoesNotExist(result_id)
        return result


def _option_int(alias: str, options: dict[str, Any], name: str, *, minimum: int) -> int:
    value = options[name]
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ImproperlyConfigured(
            f"TASKS[{alias!r}]['OPTIONS'][{name!r}] must be an int of at least {minimum}, "
            f"got {value!r}"
        )
    return value


def _refusal(bridge: Bridge) -> Exception:
    """Why ``bridge`` refused a hand-off: shut down (or its loop died), or a full backlog."""
    try:
        bridge.start()  # raises BridgeClosed (saying why) when admission is closed
    except BridgeClosed as exc:
        return exc
    return BacklogFull(
        f"asyncbridge backlog is full ({bridge.options.max_pending} pending); the task was "
        "dropped and counted (raise max_pending, or use on_full='block' or 'raise')"
    )


# -- results: one store per backend alias and process -------------------------------------------


@dataclasses.dataclass(eq=False)
class _Entry:
    """A result and what the backend needs to settle it."""

    result: TaskResult[Any]
    bridge: weakref.ref[Bridge]
    done: threading.Event | None  # set when finished; only for EAGER


class _Store:
    """The results of one backend alias in one process, bounded, and those not finished yet.

    Every change to a result happens under the lock, and readers get copies, so a snapshot
    never shows a half-made change (a status without its finish time).
    """

    def __init__(self, alias: str, max_results: int) -> None:
        self.alias = alias
        self.pid = os.getpid()
        self.worker_id = get_random_string(32)
        self.max_results = max_results
        self.lock = threading.Lock()
        self.results: collections.OrderedDict[str, TaskResult[Any]] = collections.OrderedDict()
        self.unfinished: dict[str, _Entry] = {}
        self._id_key = os.urandom(32)
        self._id_counter = itertools.count()

    def new_id(self) -> str:
        """An id no one can guess without this process's key, made without a system call.

        A system call releases the GIL, and a caller that releases it while the bridge loop is
        busy waits up to the interpreter's switch interval (5 ms) to get it back: reading
        urandom for every id (``get_random_string``, ``secrets``) made ``enqueue()`` ten times
        slower under load.
        """
        n = next(self._id_counter).to_bytes(8, "little")
        return hashlib.blake2b(n, key=self._id_key, digest_size=16).hexdigest()

    def add(self, result: TaskResult[Any], bridge: Bridge, *, eager: bool) -> _Entry:
        entry = _Entry(result, weakref.ref(bridge), threading.Event() if eager else None)
        with self.lock:
            self.unfinished[result.id] = entry
            if self.max_results:
                self.results[result.id] = result
                while len(self.results) > self.max_results:
                    self.results.popitem(last=False)
        return entry

    def get(self, result_id: str) -> TaskResult[Any] | None:
        with self.lock:
            result = self.results.get(result_id)
            return None if result is None else self._copy(result)

    def snapshot(self, result: TaskResult[T]) -> TaskResult[T]:
        with self.lock:
            return self._copy(result)

    @staticmethod
    def _copy(result: TaskResult[T]) -> TaskResult[T]:
        # Field by field: copy.copy() of a frozen slots dataclass costs ten times as much.
        clone = object.__new__(type(result))
        for name in _result_fields(type(result)):
            object.__setattr__(clone, name, getattr(result, name))
        object.__setattr__(clone, "errors", list(result.errors))
        object.__setattr__(clone, "worker_ids", list(result.worker_ids))
        return clone

    def start(self, entry: _Entry) -> bool:
        """Mark the result RUNNING; False when it was settled already (cancelled at shutdown)."""
        result = entry.result
        now = timezone.now()
        with self.lock:
            if result.id not in self.unfinished:
                return False
            object.__setattr__(result, "started_at", now)
            object.__setattr__(result, "last_attempted_at", now)
            result.worker_ids.append(self.worker_id)
            object.__setattr__(result, "status", TaskResultStatus.RUNNING)
        return True

    def finish(self, entry: _Entry, value: Any = None, error: BaseException | None = None) -> bool:
        """Settle the result (first settlement wins); False when it was settled already."""
        result = entry.result
        now = timezone.now()
        with self.lock:
            if self.unfinished.pop(result.id, None) is None:
                return False
            object.__setattr__(result, "finished_at", now)
            if error is None:
                object.__setattr__(result, "_return_value", value)
                object.__setattr__(result, "status", TaskResultStatus.SUCCESSFUL)
            else:
                result.errors.append(_task_error(error))
                object.__setattr__(result, "status", TaskResultStatus.FAILED)
        if entry.done is not None:
            entry.done.set()
        return True

    def finish_failed(self, sender: type[BaseTaskBackend], entry: _Entry, error: Exception) -> None:
        """Settle a result the bridge refused as FAILED, and say so with ``task_finished``."""
        if self.finish(entry, error=error):
            task_finished.send_robust(sender, task_result=entry.result)

    def settle_abandoned(self, sender: type[BaseTaskBackend], bridge: Bridge) -> list[_Entry]:
        """FAILED for every result of ``bridge`` that its shutdown left unfinished."""
        with self.lock:
            mine = [e for e in self.unfinished.values() if e.bridge() is bridge]
        settled = []
        for entry in mine:
            started = entry.result.status == TaskResultStatus.RUNNING
            why = (
                "still running when the asyncbridge drain deadline passed; cancelled"
                if started
                else "not started before the asyncbridge drain deadline; cancelled"
            )
            if self.finish(entry, error=asyncio.CancelledError(why)):
                settled.append(entry)
        return settled


_FIELDS: dict[type[Any], tuple[str, ...]] = {}


def _result_fields(cls: type[Any]) -> tuple[str, ...]:
    names = _FIELDS.get(cls)
    if names is None:
        names = _FIELDS[cls] = tuple(f.name for f in dataclasses.fields(cls))
    return names


def _task_error(error: BaseException) -> TaskError:
    kind = type(error)
    return TaskError(
        exception_class_path=f"{kind.__module__}.{kind.__qualname__}",
        traceback="".join(traceback.format_exception(error)),
    )


_stores: dict[tuple[int, str], _Store] = {}
_stores_lock = threading.Lock()


def _store(alias: str, max_results: int) -> _Store:
    # Backends are made once per thread (Django keeps them in a thread-local), so the results
    # live here, per process: a child forked with this module loaded starts empty.
    key = (os.getpid(), alias)
    store = _stores.get(key)
    if store is None:
        with _stores_lock:
            store = _stores.setdefault(key, _Store(alias, max_results))
    return store


# -- running: on the loop (async def) or in the bridge's threads (def) ---------------------------


async def _run_async(sender: type[BaseTaskBackend], store: _Store, entry: _Entry) -> None:
    _watch_shutdown(sender, store)
    if not store.start(entry):
        return
    result = entry.result
    task = result.task
    await _signal(task_started, sender, result)
    try:
        if task.takes_context:
            value = await task.func(TaskContext(task_result=result), *result.args, **result.kwargs)
        else:
            value = await task.func(*result.args, **result.kwargs)
        value = normalize_json(value)
    except asyncio.CancelledError as exc:  # the drain deadline (or a timeout) passed
        if store.finish(entry, error=exc):
            _signal_soon(task_finished, sender, result)
        raise
    except BaseException as exc:
        store.finish(entry, error=exc)
        await _signal(task_finished, sender, result)
        raise  # the bridge counts it as failed, logs it and calls on_error
    store.finish(entry, value=value)
    await _signal(task_finished, sender, result)


async def _run_sync(
    sender: type[BaseTaskBackend], store: _Store, entry: _Entry, threads: int
) -> None:
    _watch_shutdown(sender, store)
    context = contextvars.copy_context()
    pool = _pool(f"tasks-{store.alias}", threads)
    future = pool.submit(lambda: context.run(_call_sync, sender, store, entry))
    try:
        await asyncio.wrap_future(future)
    except asyncio.CancelledError as exc:
        if future.cancel():  # never started: settle it here; a running thread settles itself
            if store.finish(entry, error=exc):
                _signal_soon(task_finished, sender, entry.result)
        raise


def _call_sync(sender: type[BaseTaskBackend], store: _Store, entry: _Entry) -> None:
    from django.db import close_old_connections  # type: ignore[import-untyped]

    if not store.start(entry):
        return
    result = entry.result
    task = result.task
    close_old_connections()  # as around a request: this thread outlives many tasks
    try:
        task_started.send_robust(sender, task_result=result)
        try:
            if task.takes_context:
                value = task.func(TaskContext(task_result=result), *result.args, **result.kwargs)
            else:
                value = task.func(*result.args, **result.kwargs)
            value = normalize_json(value)
        except BaseException as exc:
            store.finish(entry, error=exc)
            task_finished.send_robust(sender, task_result=result)
            raise
        store.finish(entry, value=value)
        task_finished.send_robust(sender, task_result=result)
    finally:
        close_old_connections()


def _watch_shutdown(sender: type[BaseTaskBackend], store: _Store) -> None:
    """On the loop, once per loop and store: settle what this bridge's shutdown leaves behind."""
    loop = asyncio.get_running_loop()
    watched = _watched.setdefault(loop, set())
    if id(store) in watched:
        return
    watched.add(id(store))
    bridge = Bridge.current()
    if bridge is None:  # not on a bridge loop (cannot happen through enqueue())
        return

    async def settle() -> None:
        # Close callbacks run after the drain has cancelled what was left, started or not.
        for entry in store.settle_abandoned(sender, bridge):
            await _signal(task_finished, sender, entry.result)

    bridge.add_close_callback(settle)


# The signals of async tasks go to receivers from a thread of their own, like Django's asend()
# (a receiver may block, or use the ORM), but not through asgiref's sync_to_async: its executor
# refuses work once the interpreter has begun to exit, where the atexit fallback drains
# (runserver, scripts).
_SIGNALS = "signals"


async def _signal(signal: Any, sender: type[BaseTaskBackend], result: TaskResult[Any]) -> None:
    """Send ``signal`` for ``result`` from the signal thread and wait; never raises."""
    try:
        await asyncio.wrap_future(_signal_soon(signal, sender, result))
    except Exception:
        _logger.exception("asyncbridge could not send a Django task signal for %s", result.id)


def _signal_soon(
    signal: Any, sender: type[BaseTaskBackend], result: TaskResult[Any]
) -> concurrent.futures.Future[Any]:
    """Queue ``signal`` for ``result`` on the signal thread (for paths that cannot await)."""
    return _pool(_SIGNALS, 1).submit(lambda: signal.send_robust(sender, task_result=result))


_watched: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, set[int]] = (
    weakref.WeakKeyDictionary()
)


class _DaemonPool:
    """Threads for ``def`` tasks: daemon threads, so a task still running at exit dies with the
    process instead of holding it past the server's deadline (``ThreadPoolExecutor`` joins its
    threads at interpreter exit). The bridge's drain bounds how long they get; what is still
    running at its deadline was counted as cancelled.
    """

    def __init__(self, size: int, name: str, *, inline_after_close: bool = False) -> None:
        self._size = size
        self._name = name
        # Closed: run new work in the caller (signals) instead of cancelling it (tasks).
        self._inline_after_close = inline_after_close
        self._queue: queue.SimpleQueue[
            tuple[concurrent.futures.Future[Any], Callable[[], Any]] | None
        ] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._closed = False

    def submit(self, fn: Callable[[], T]) -> concurrent.futures.Future[T]:
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        if self._closed:
            if self._inline_after_close:
                _run_into(future, fn)
            else:
                future.cancel()
                future.set_running_or_notify_cancel()
            return future
        self._queue.put((future, fn))
        if len(self._threads) < self._size:
            thread = threading.Thread(
                target=self._work, name=f"{self._name}-{len(self._threads)}", daemon=True
            )
            self._threads.append(thread)
            thread.start()
        return future

    def _work(self) -> None:
        while (item := self._queue.get()) is not None:
            _run_into(*item)

    def close(self, *, cancel_queued: bool) -> None:
        """Take no more; cancel what has not started, or let it run; threads end when idle."""
        self._closed = True
        while cancel_queued:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is not None:
                item[0].cancel()
        for _ in self._threads:
            self._queue.put(None)


def _run_into(future: concurrent.futures.Future[T], fn: Callable[[], T]) -> None:
    if not future.set_running_or_notify_cancel():
        return
    try:
        future.set_result(fn())
    except BaseException as exc:
        future.set_exception(exc)


# Each bridge loop's thread pools: "tasks-<alias>" per backend alias, and "signals".
_pools: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, _DaemonPool]] = (
    weakref.WeakKeyDictionary()
)


def _pool(name: str, size: int) -> _DaemonPool:
    """The running bridge loop's pool ``name``, made on first use and closed with the bridge.

    Called on the loop thread only (``add_close_callback`` requires it).
    """
    loop = asyncio.get_running_loop()
    pools = _pools.setdefault(loop, {})
    pool = pools.get(name)
    if pool is None:
        signals = name == _SIGNALS
        pool = _DaemonPool(size, f"asyncbridge-{name}", inline_after_close=signals)
        pools[name] = pool
        bridge = Bridge.current()
        if bridge is not None:

            async def close() -> None:
                # Queued signals still go out, and later ones inline (the closed pool stays in
                # place for them); queued tasks were cancelled with their coroutines.
                if not signals:
                    pools.pop(name, None)
                pool.close(cancel_queued=not signals)

            bridge.add_close_callback(close)
    return pool
