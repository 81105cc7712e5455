"""Sphinx configuration: furo, MyST Markdown, autodoc. Built with warnings as errors."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from asyncbridge import __version__  # noqa: E402

project = "asyncbridge"
author = "asyncbridge maintainers"
copyright = "asyncbridge maintainers"
release = __version__
version = ".".join(__version__.split(".")[:2])

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
]
source_suffix = {".md": "markdown"}
exclude_patterns = ["_build", "examples", "Thumbs.db", ".DS_Store"]
myst_enable_extensions = ["colon_fence", "deflist"]
myst_heading_anchors = 3

html_theme = "furo"
html_title = f"asyncbridge {release}"
html_static_path = ["_static"] if (Path(__file__).parent / "_static").is_dir() else []

# Every cross-reference must resolve: a broken one fails the build.
nitpicky = True
nitpick_ignore_regex = [
    # Third-party and standard-library targets: there is no network for intersphinx here.
    ("py:class", r"(aiohttp|asyncio|concurrent|collections|contextvars|types|typing)\..*"),
    ("py:class", r"(gunicorn|_pytest|pytest)\..*"),
    # The host libraries the adapters derive from or take (no intersphinx here either).
    ("py:(class|exc|func|meth|mod|data|obj)", r"(rq|dramatiq|django_tasks|django|celery)\b.*"),
    ("py:(class|exc|func|meth|mod|data|obj)", r"(prometheus_client|redis|mod_wsgi|waitress)\b.*"),
    # Their names as rq's and Django's own signatures spell them, unqualified.
    ("py:(class|exc)", r"(Job|Queue|Redis|Serializer|Execution|struct_rusage|Seconds)"),
    ("py:(class|exc)", r"ImproperlyConfigured"),
    ("py:(class|exc|func|meth|mod|data|obj)", r"(aiohttp|asyncio|json|pytest|gunicorn|uwsgi)\b.*"),
    ("py:(exc|class)", r"(TimeoutError|RuntimeError|TypeError|ValueError|BaseException)"),
    ("py:class", r"(T|Any|Coroutine|Mapping|Callable|Literal|Future|Self)"),
    # Private aliases in signatures; the configuration page documents what they accept.
    ("py:class", r"asyncbridge\._\w+\.\w+"),
    ("py:class", r"asyncbridge\.\w+\._\w+"),  # a private base class in a public module
    ("py:class", r"(OnFull|ErrorHook|DropHook|LoopFactory)"),
    # Type variables of generic signatures.
    ("py:(class|obj)", r"(asyncbridge\.[\w.]+\.)?[TB]"),
    # An instance attribute (set in __init__), which autodoc cannot list.
    ("py:attr", r"errors"),
]

autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_preserve_defaults = True
# uWSGI provides these only inside its own process.
autodoc_mock_imports = ["uwsgi", "uwsgidecorators"]
autodoc_default_options: dict[str, Any] = {"members": True, "show-inheritance": True}
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False

# The API reference covers the public modules. Adapters arrive in their own commits, and some
# import a server package (gunicorn, uwsgi) that is only present inside that server; the page
# lists each module that exists, so the build passes before and after it lands.
# Each adapter also names the package it imports, so that a docs-only environment (./scripts/docs)
# leaves out, with a note, the pages whose host library it lacks; ./scripts/test has them all.
API_MODULES = (
    ("asyncbridge", "The core: hand-off, lifecycle, configuration, accounting.", None),
    ("asyncbridge.gunicorn", "gunicorn hooks for a config file.", None),
    ("asyncbridge.uwsgi", "uWSGI integration, called from the app module.", None),
    ("asyncbridge.mod_wsgi", "Apache mod_wsgi: a drain at daemon shutdown.", None),
    ("asyncbridge.waitress", "Waitress: SIGTERM stops it the way Ctrl-C does.", None),
    ("asyncbridge.celery", "Celery prefork children: start and drain.", None),
    ("asyncbridge.rq", "An RQ worker class whose work horse drains before it exits.", "rq"),
    ("asyncbridge.dramatiq", "Dramatiq middleware: start and drain.", "dramatiq"),
    ("asyncbridge.django", "A Django Tasks backend on the bridge loop.", "django"),
    ("asyncbridge.prometheus", "Prometheus metrics across workers.", "prometheus_client"),
    ("asyncbridge.aiohttp", "One pooled aiohttp session per process (extra `aiohttp`).", "aiohttp"),
    ("asyncbridge.pytest_plugin", "Fixtures for testing an app that uses asyncbridge.", None),
)


def available_api_modules() -> list[tuple[str, str]]:
    """The API modules whose source, and whose host library, exist in this environment."""
    found = []
    for name, summary, needs in API_MODULES:
        if importlib.util.find_spec(name) is None:
            continue
        if needs is not None and importlib.util.find_spec(needs) is None:
            print(f"docs: leaving out {name}: {needs} is not installed here")
            continue
        found.append((name, summary))
    return found


def _api_sections() -> str:
    parts = []
    for name, summary in available_api_modules():
        parts.append(
            f"## `{name}`\n\n{summary}\n\n"
            f"```{{eval-rst}}\n.. automodule:: {name}\n   :members:\n   :show-inheritance:\n```\n"
        )
    return "\n".join(parts)


# The guides in reading order; any other page under guides/ follows, by name.
GUIDE_ORDER = (
    "gunicorn",
    "uwsgi",
    "mod_wsgi",
    "granian",
    "passenger",
    "waitress",
    "plain-process",
    "celery",
    "rq",
    "dramatiq",
    "flask",
    "django",
    "django-tasks",
    "when-the-other-side-fails",
    "operators",
    "pusher",
    "testing",
)


def _guides_toctree() -> str:
    # The guides arrive one by one, and a toctree entry (or glob) that matches no page is a
    # warning, an error here: list the pages that exist.
    present = {p.stem for p in (Path(__file__).parent / "guides").glob("*.md")}
    if not present:
        return ""
    ordered = [g for g in GUIDE_ORDER if g in present] + sorted(present - set(GUIDE_ORDER))
    entries = "\n".join(f"guides/{g}" for g in ordered)
    return f"```{{toctree}}\n:maxdepth: 1\n:caption: Guides\n\n{entries}\n```"


def _fill_placeholders(app: Any, docname: str, source: list[str]) -> None:
    if docname == "api":
        source[0] = source[0].replace("<!-- api-modules -->", _api_sections())
    elif docname == "index":
        source[0] = source[0].replace("<!-- guides-toctree -->", _guides_toctree())


def _keep_property_summary(
    app: Any, what: str, name: str, obj: Any, options: Any, lines: list[str]
) -> None:
    # napoleon reads a property docstring's first line "text: more" as "type: description".
    # Breaking the line after the colon keeps it prose; this runs before napoleon (priority 500).
    # leading blank line makes it plain prose again (before napoleon, which runs at priority 500).
    if what == "property" and lines and ": " in lines[0]:
        head, _, tail = lines[0].partition(": ")
        lines[0:1] = [head + ":", tail]


def _defining_module(app: Any, modname: str, fullname: str) -> str | None:
    # asyncbridge/__init__.py presents every public name as asyncbridge.<name> (its __module__),
    # so viewcode would look for the source in __init__.py. Point it at the private module
    # whose source defines the name instead.
    if modname != "asyncbridge":
        return None
    from sphinx.pycode import ModuleAnalyzer

    top = fullname.split(".")[0]
    obj = getattr(sys.modules["asyncbridge"], top, None)
    for name, module in sorted(sys.modules.items()):
        if name.startswith("asyncbridge._") and getattr(module, top, None) is obj:
            if top in ModuleAnalyzer.for_module(name).find_tags():
                return name
    return None


def _reread_index_when_pages_change(
    app: Any, env: Any, added: set[str], changed: set[str], removed: set[str]
) -> list[str]:
    # The guides toctree is computed when index.md is read; an incremental build re-reads only
    # changed files, so a guide added or removed since the last build must re-read the index.
    return ["index"] if added or removed else []


def setup(app: Any) -> None:
    app.connect("env-get-outdated", _reread_index_when_pages_change)
    app.connect("viewcode-follow-imported", _defining_module)
    app.connect("source-read", _fill_placeholders)
    app.connect("autodoc-process-docstring", _keep_property_summary, priority=400)
