"""asyncbridge: a fork-safe background asyncio loop per worker process.

Synchronous code (a WSGI request under gunicorn or uWSGI, a script) hands coroutines to
:func:`run_soon` and returns at once; the loop runs them in a daemon thread and drains them when
the worker exits. The server adapters are separate modules that this package does not import:
:mod:`asyncbridge.gunicorn`, :mod:`asyncbridge.uwsgi`, :mod:`asyncbridge.aiohttp`.
"""

from ._api import (
    configure,
    default_bridge,
    get_loop,
    run,
    run_soon,
    set_default_bridge,
    shutdown,
    start,
    stats,
    submit,
)
from ._bridge import Bridge
from ._config import Options
from ._errors import AsyncBridgeError, BacklogFull, BridgeClosed
from ._signals import install_signal_handlers
from ._stats import ShutdownReport, Stats
from ._version import __version__

__all__ = [
    "AsyncBridgeError",
    "BacklogFull",
    "Bridge",
    "BridgeClosed",
    "Options",
    "ShutdownReport",
    "Stats",
    "__version__",
    "configure",
    "default_bridge",
    "get_loop",
    "install_signal_handlers",
    "run",
    "run_soon",
    "set_default_bridge",
    "shutdown",
    "start",
    "stats",
    "submit",
]
