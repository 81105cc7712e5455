"""Options of a bridge: names, defaults, validation, and ``ASYNCBRIDGE_<NAME>`` parsing."""

from __future__ import annotations

import asyncio
import importlib
import logging
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields, replace
from typing import Any, Literal

from ._inputs import as_float
from ._inputs import shown as _brief

__all__ = ["ENV_PREFIX", "OnFull", "Options", "options_from_env"]

ENV_PREFIX = "ASYNCBRIDGE_"

OnFull = Literal["drop", "raise", "block"]
_ON_FULL = ("drop", "raise", "block")

logger = logging.getLogger("asyncbridge")

ErrorHook = Callable[[BaseException, str], object]
DropHook = Callable[[str, str], object]
LoopFactory = Callable[[], asyncio.AbstractEventLoop]


@dataclass(frozen=True, slots=True)
class Options:
    """Every setting of a bridge. See the configuration reference for what each one changes."""

    max_pending: int = 10_000
    max_concurrency: int | None = 100
    on_full: OnFull = "drop"
    block_timeout: float = 1.0
    drain_timeout: float = 10.0
    task_timeout: float | None = None
    log_interval: float = 10.0
    loop_factory: LoopFactory | None = None
    on_error: ErrorHook | None = None
    on_drop: DropHook | None = None
    stall_warning: float | None = 1.0
    status_dir: str | None = None

    def updated(self, changes: Mapping[str, Any]) -> Options:
        """A copy with ``changes`` applied, each validated.

        Raises:
            TypeError: An unknown option name, or a value of the wrong type.
            ValueError: A value of the right type that is out of range.
        """
        validated: dict[str, Any] = {
            name: _validate(name, value) for name, value in changes.items()
        }
        return replace(self, **validated)


_NAMES = tuple(f.name for f in fields(Options))


def _positive_int(name: str, value: object, *, allow_none: bool = False) -> int | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {_brief(value)}")
    if value < 1:
        raise ValueError(f"{name} must be at least 1, got {_brief(value)}")
    return value


def _seconds(
    name: str, value: object, *, allow_none: bool = False, allow_zero: bool = False
) -> float | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(
            f"{name} must be a number of seconds, got {type(value).__name__} {_brief(value)}"
        )
    seconds = as_float(value) + 0.0  # + 0.0 turns -0.0 into 0.0
    if not math.isfinite(seconds) or seconds < 0 or (seconds == 0 and not allow_zero):
        bound = "at least 0" if allow_zero else "greater than 0"
        raise ValueError(f"{name} must be a finite number of seconds {bound}, got {_brief(value)}")
    return seconds


def _callable(name: str, value: object) -> object:
    if value is not None and not callable(value):
        raise TypeError(
            f"{name} must be callable or None, got {type(value).__name__} {_brief(value)}"
        )
    return value


def _validate(name: str, value: object) -> object:
    if name not in _NAMES:
        raise TypeError(f"unknown asyncbridge option {name!r}; known options: {', '.join(_NAMES)}")
    if name == "max_pending":
        return _positive_int(name, value)
    if name == "max_concurrency":
        return _positive_int(name, value, allow_none=True)
    if name == "on_full":
        if value not in _ON_FULL:
            raise ValueError(
                f"on_full must be one of {', '.join(map(repr, _ON_FULL))}, got {_brief(value)}"
            )
        return value
    if name == "block_timeout":
        return _seconds(name, value, allow_zero=True)
    if name == "drain_timeout":
        return _seconds(name, value, allow_zero=True)
    if name == "task_timeout":
        return _seconds(name, value, allow_none=True)
    if name == "log_interval":
        return _seconds(name, value)
    if name == "stall_warning":
        return _seconds(name, value, allow_none=True)
    if name == "status_dir":
        return _directory(name, value)
    return _callable(name, value)


def _directory(name: str, value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str | os.PathLike):
        raise TypeError(
            f"{name} must be a path or None, got {type(value).__name__} {_brief(value)}"
        )
    path = os.fspath(value)
    if not isinstance(path, str) or not path:
        raise ValueError(f"{name} must be a non-empty path, got {_brief(value)}")
    return path


def _import_object(name: str, path: str) -> object:
    module_name, sep, attr = path.replace(":", ".").rpartition(".")
    if not sep or not module_name:
        raise ValueError(
            f"{ENV_PREFIX}{name.upper()} must be a dotted path such as "
            f"'uvloop.new_event_loop', got {path!r}"
        )
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"{ENV_PREFIX}{name.upper()}={path!r} cannot be imported: {exc}") from exc


_NONE_ALLOWED = ("max_concurrency", "task_timeout", "stall_warning", "status_dir")


def _parse_env_value(name: str, raw: str) -> object:
    text = raw.strip()
    env = f"{ENV_PREFIX}{name.upper()}"
    if name in _NONE_ALLOWED and text.lower() in ("", "none"):
        return None
    if name in ("max_pending", "max_concurrency"):
        try:
            return int(text)
        except ValueError:
            raise ValueError(f"{env} must be a whole number, got {_brief(raw)}") from None
    if name in ("block_timeout", "drain_timeout", "task_timeout", "stall_warning"):
        try:
            return float(text)
        except ValueError:
            raise ValueError(f"{env} must be a number of seconds, got {_brief(raw)}") from None
    if name == "log_interval":
        try:
            return float(text)
        except ValueError:
            shown = repr(raw) if len(raw) <= 50 else f"{raw[:50]!r}... ({len(raw)} characters)"
            raise ValueError(f"{env} must be a number of seconds, got {shown}") from None
    if name == "on_full":
        return text.lower()
    if name == "status_dir":
        return text
    return None if text.lower() in ("", "none") else _import_object(name, text)


def options_from_env(environ: Mapping[str, str] | None = None) -> dict[str, object]:
    """Read every ``ASYNCBRIDGE_<NAME>`` variable into validated option values.

    Raises:
        ValueError: A variable's value does not parse or is out of range. A variable that names
            no option is logged as a warning and ignored.
    """
    env = os.environ if environ is None else environ
    found: dict[str, object] = {}
    for key, raw in env.items():
        if not key.startswith(ENV_PREFIX):
            continue
        name = key[len(ENV_PREFIX) :].lower()
        if name not in _NAMES:
            known = ", ".join(ENV_PREFIX + n.upper() for n in _NAMES)
            logger.warning("ignoring unknown environment variable %s; known: %s", key, known)
            continue
        value = _parse_env_value(name, raw)
        try:
            found[name] = _validate(name, value)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{key}={_brief(raw)}: {exc}") from None
    return found
