"""asyncbridge: a fork-safe background asyncio loop per worker process.

Synchronous code (a WSGI request under gunicorn or uWSGI, a script) hands coroutines to
:func:`run_soon` and returns at once; the loop runs them in a daemon thread and drains them when
the worker exits. The server adapters are separate modules that this package does not import:
:mod:`asyncbridge.gunicorn`, :mod:`asyncbridge.uwsgi`, :mod:`asyncbridge.aiohttp`.
"""

from ._api import (
    batcher,
    configure,
    default_bridge,
    get_loop,
    lane,
    run,
    run_soon,
    set_default_bridge,
    shutdown,
    start,
    stats,
    submit,
)
from ._batcher import Batcher
from ._bridge import Bridge
from ._config import Options
from ._errors import AsyncBridgeError, BacklogFull, BridgeClosed
from ._lane import Lane
from ._retry import retrying
from ._signals import install_signal_handlers
from ._stats import ShutdownReport, Stats
from ._version import __version__

__all__ = [
    "AsyncBridgeError",
    "BacklogFull",
    "Batcher",
    "Bridge",
    "BridgeClosed",
    "Lane",
    "Options",
    "ShutdownReport",
    "Stats",
    "__version__",
    "batcher",
    "configure",
    "default_bridge",
    "get_loop",
    "install_signal_handlers",
    "lane",
    "retrying",
    "run",
    "run_soon",
    "set_default_bridge",
    "shutdown",
    "start",
    "stats",
    "submit",
]


# Every public name is presented as asyncbridge.<name>, not as the private module that defines it:
# in reprs and tracebacks ("asyncbridge.BacklogFull: ..."), pickles and the API reference. Names
# added to __all__ later are covered too. Only classes and functions (which have __code__) are
# renamed; any other value keeps its type's module.
for _name in __all__:
    _obj = globals()[_name]
    _class_or_function = isinstance(_obj, type) or hasattr(_obj, "__code__")
    if _class_or_function and _obj.__module__.startswith(__name__ + "._"):
        _obj.__module__ = __name__
del _name, _obj, _class_or_function
