"""The public face of asyncbridge: ``__all__`` is exactly the public names, each documented."""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import pickle
import subprocess
import sys
import traceback
import types
from pathlib import Path

import pytest

import asyncbridge


def _public_names() -> set[str]:
    return {
        name
        for name, value in vars(asyncbridge).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }


def test_all_is_sorted_without_duplicates() -> None:
    assert list(asyncbridge.__all__) == sorted(set(asyncbridge.__all__))


def test_all_lists_exactly_the_public_attributes() -> None:
    # anyio's test_all_attributes idea: nothing public is missing from __all__, and __all__
    # names nothing that is private, a submodule, or absent.
    declared = set(asyncbridge.__all__) - {"__version__"}
    assert declared == _public_names()
    for name in asyncbridge.__all__:
        assert hasattr(asyncbridge, name), name


def test_version_is_a_string() -> None:
    assert isinstance(asyncbridge.__version__, str)
    assert asyncbridge.__version__.split(".")[0].isdigit()


@pytest.mark.parametrize("name", sorted(_public_names()))
def test_every_public_callable_has_a_docstring(name: str) -> None:
    obj = getattr(asyncbridge, name)
    assert callable(obj), name
    assert inspect.getdoc(obj), f"asyncbridge.{name} has no docstring"
    if inspect.isclass(obj):
        for attr, member in vars(obj).items():
            if attr.startswith("_"):
                continue
            if isinstance(member, property | types.FunctionType | staticmethod | classmethod):
                assert inspect.getdoc(member), f"asyncbridge.{name}.{attr} has no docstring"


ADAPTERS = (
    "asyncbridge.aiohttp",
    "asyncbridge.celery",
    "asyncbridge.django",
    "asyncbridge.dramatiq",
    "asyncbridge.gunicorn",
    "asyncbridge.mod_wsgi",
    "asyncbridge.prometheus",
    "asyncbridge.pytest_plugin",
    "asyncbridge.rq",
    "asyncbridge.uwsgi",
    "asyncbridge.waitress",
)


def test_every_adapter_module_is_listed_here_and_in_the_api_docs() -> None:
    package = Path(asyncbridge.__file__).parent
    on_disk = {f"asyncbridge.{p.stem}" for p in package.glob("*.py") if not p.stem.startswith("_")}
    assert on_disk == set(ADAPTERS)
    conf = (package.parent / "docs" / "conf.py").read_text()
    missing = [name for name in ADAPTERS if f'("{name}",' not in conf]
    assert not missing, f"docs/conf.py API_MODULES lacks {missing}"


@pytest.mark.parametrize("module_name", ADAPTERS)
def test_adapter_all_is_sorted_and_documented(module_name: str) -> None:
    if importlib.util.find_spec(module_name) is None:
        pytest.skip(f"{module_name} is not written yet")
    module = importlib.import_module(module_name)
    assert inspect.getdoc(module), f"{module_name} has no module docstring"
    exported = list(module.__all__)
    # Its order is ruff's (RUF022: constants, then classes, then functions), checked by lint.
    assert len(exported) == len(set(exported))
    for name in exported:
        obj = getattr(module, name)
        if callable(obj):
            assert inspect.getdoc(obj), f"{module_name}.{name} has no docstring"


def test_importing_asyncbridge_loads_no_adapter() -> None:
    # Each adapter pulls in something optional (a server, aiohttp, pytest); the core must not.
    code = (
        "import sys, asyncbridge; "
        "print(sorted(m for m in sys.modules if m in {'aiohttp', 'gunicorn', 'uwsgi', 'pytest'} "
        "or m.startswith('asyncbridge.') and not m.startswith('asyncbridge._')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.strip() == "[]"


# -- every public name is presented as asyncbridge.<name> ---------------------------------------


def _public_classes_and_functions() -> list[str]:
    return [
        name
        for name in asyncbridge.__all__
        if inspect.isclass(getattr(asyncbridge, name))
        or inspect.isfunction(getattr(asyncbridge, name))
    ]


def test_the_public_names_include_classes_and_functions_from_private_modules() -> None:
    names = _public_classes_and_functions()
    # The check below must not pass vacuously: each of these is defined in a private module.
    assert {"AsyncBridgeError", "BacklogFull", "Bridge", "run_soon", "shutdown"} <= set(names)
    defined_in = {inspect.getsourcefile(getattr(asyncbridge, name)) for name in names}
    assert all("/asyncbridge/_" in str(path) for path in defined_in), defined_in


@pytest.mark.parametrize("name", _public_classes_and_functions())
def test_every_public_class_and_function_names_asyncbridge_as_its_module(name: str) -> None:
    obj = getattr(asyncbridge, name)
    assert obj.__module__ == "asyncbridge"
    assert obj.__qualname__ == name  # so that asyncbridge.<qualname> finds it again
    assert pickle.loads(pickle.dumps(obj)) is obj  # by reference, through the public path


@pytest.mark.parametrize("name", ["AsyncBridgeError", "BacklogFull", "BridgeClosed"])
def test_exceptions_print_and_pickle_under_their_public_name(name: str) -> None:
    cls = getattr(asyncbridge, name)
    assert repr(cls) == f"<class 'asyncbridge.{name}'>"
    try:
        raise cls("what to do next")
    except asyncbridge.AsyncBridgeError as exc:
        last_line = traceback.format_exception(exc)[-1]
        copy = pickle.loads(pickle.dumps(exc))
    assert last_line == f"asyncbridge.{name}: what to do next\n"
    assert type(copy) is cls and copy.args == ("what to do next",)


def test_an_uncaught_exception_names_the_public_class_in_a_real_traceback() -> None:
    code = "import asyncbridge; raise asyncbridge.BacklogFull('the backlog is full')"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert done.stderr.splitlines()[-1] == "asyncbridge.BacklogFull: the backlog is full"


def test_the_stats_and_report_values_pickle_and_print_as_public_classes() -> None:
    stats = asyncbridge.Bridge().stats()
    assert pickle.loads(pickle.dumps(stats)) == stats
    assert f"{type(stats).__module__}.{type(stats).__qualname__}" == "asyncbridge.Stats"
