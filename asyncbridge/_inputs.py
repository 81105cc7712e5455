"""Checking what callers hand over, and naming it for logs without its arguments."""

from __future__ import annotations

import asyncio
import inspect
import math
import threading

__all__ = [
    "MAX_WAIT",
    "brief",
    "clamp_wait",
    "coroutine_name",
    "not_a_coroutine",
    "shown",
    "timeout_arg",
]

# The longest wait the threading primitives accept; a longer one raises OverflowError.
MAX_WAIT = threading.TIMEOUT_MAX


def clamp_wait(seconds: float) -> float:
    """``seconds`` made safe for ``Event.wait`` and friends: at least 0, at most MAX_WAIT."""
    return 0.0 if seconds <= 0 else min(seconds, MAX_WAIT)


def as_float(value: int | float) -> float:
    """``float(value)``, with an int too big for a float as infinite (not ``OverflowError``)."""
    try:
        return float(value)
    except OverflowError:
        return math.inf if value > 0 else -math.inf


def timeout_arg(api: str, value: object) -> float | None:
    """Check a ``timeout=`` argument given at call time: None, or seconds (inf means no limit).

    Raises:
        TypeError: Not a number (a bool is not one).
        ValueError: NaN.
    """
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{api}() timeout must be a number of seconds or None, got {brief(value)}")
    seconds = as_float(value)
    if math.isnan(seconds):
        raise ValueError(f"{api}() timeout must be a number of seconds or None, got nan")
    return clamp_wait(seconds)


def shown(value: object) -> str:
    """A value's repr for an error message: cut short, one line, and never failing.

    A repr may raise, be huge (a 1 MB string) or, for an int of more than 4,300 digits, refuse.
    """
    try:
        text = str.__str__(repr(value))
    except Exception:
        return f"a {coroutine_name(type(value))} that cannot be shown"
    if len(text) > 60 or not text.isprintable():
        cut = text[:50].encode("unicode_escape").decode("ascii")[:50]
        text = f"{cut}... ({len(text)} characters)"
    return text


def brief(value: object) -> str:
    """``shown(value)`` preceded by the value's type: ``"int 3"``."""
    return f"{coroutine_name(type(value))} {shown(value)}"


def coroutine_name(obj: object) -> str:
    """The qualified name of a coroutine (or task, or function), never its arguments."""
    if isinstance(obj, asyncio.Task):
        obj = obj.get_coro()
    try:
        name = getattr(obj, "__qualname__", None)
    except Exception:  # a property that raises: fall back to the type, never fail a log line
        name = None
    if not isinstance(name, str):
        name = type(obj).__qualname__
    name = str.__str__(name)  # a str subclass could lie about its length or printability
    if len(name) > _MAX_NAME or not name.isprintable():
        # A name set by hand may be huge or carry newlines (a forged log line): keep it one line.
        name = name[:_MAX_NAME].encode("unicode_escape").decode("ascii")[:_MAX_NAME]
    return name


_MAX_NAME = 200


def not_a_coroutine(api: str, obj: object) -> TypeError:
    """A TypeError for ``api(obj)`` that says what ``obj`` is and how to pass a coroutine."""
    try:
        hint = _hint(api, obj)
    except Exception:  # an object whose attributes raise: say what its type is, nothing more
        hint = f"expected a coroutine object, got {coroutine_name(type(obj))}"
    return TypeError(f"{api}() takes a coroutine object: {hint}")


def _hint(api: str, obj: object) -> str:
    name = coroutine_name(obj)  # never raises, one short printable line
    if obj is None:
        hint = (
            "got None; pass a coroutine object, such as notify(user_id), where notify is an "
            "`async def` function (a plain function that returns None cannot be scheduled)"
        )
    elif inspect.iscoroutinefunction(obj):
        hint = (
            f"got the coroutine function {name}; did you forget to call it? "
            f"Write {api}({name}(...))"
        )
    elif inspect.isasyncgen(obj):
        hint = (
            f"got the async generator {name}; an async generator is iterated, not awaited: wrap "
            "the `async for` in an `async def` function and pass a call of it"
        )
    elif isinstance(obj, asyncio.Future):
        hint = (
            f"got an asyncio {type(obj).__name__}, which is already bound to a loop; pass the "
            "coroutine object itself, such as notify(user_id), instead of a task or future"
        )
    elif inspect.isawaitable(obj):
        hint = (
            f"got the awaitable {coroutine_name(type(obj))}, which is not a coroutine; wrap it: "
            "`async def job(): return await thing` and pass job()"
        )
    elif callable(obj):
        hint = (
            f"got the function {name}, which is not `async def`; make it a coroutine function, "
            "or run plain blocking code in a thread instead"
        )
    else:
        hint = f"expected a coroutine object, got {coroutine_name(type(obj))}"
    return hint
