"""Checking what callers hand over, and naming it for logs without its arguments."""

from __future__ import annotations

import asyncio
import inspect

__all__ = ["coroutine_name", "not_a_coroutine"]


def coroutine_name(obj: object) -> str:
    """The qualified name of a coroutine (or task, or function), never its arguments."""
    if isinstance(obj, asyncio.Task):
        obj = obj.get_coro()
    name = getattr(obj, "__qualname__", None)
    if isinstance(name, str):
        return name
    return type(obj).__qualname__


def not_a_coroutine(api: str, obj: object) -> TypeError:
    """A TypeError for ``api(obj)`` that says what ``obj`` is and how to pass a coroutine."""
    name = getattr(obj, "__qualname__", type(obj).__qualname__)
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
            f"got the awaitable {type(obj).__qualname__}, which is not a coroutine; wrap it: "
            "`async def job(): return await thing` and pass job()"
        )
    elif callable(obj):
        hint = (
            f"got the function {name}, which is not `async def`; make it a coroutine function, "
            "or run plain blocking code in a thread instead"
        )
    else:
        hint = f"expected a coroutine object, got {type(obj).__qualname__}"
    return TypeError(f"{api}() takes a coroutine object: {hint}")
