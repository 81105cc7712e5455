"""Code blocks in the Markdown docs that are copies of files: find them, check them, rewrite them.

A page shows a file (or one top-level function or class of a Python file) as an ordinary fenced
code block, preceded by a marker line, so that it reads as plain Markdown on a code forge::

    <!-- include: docs/examples/wsgi_app.py -->
    ```python
    ...the file's exact text...
    ```

    <!-- include: examples/fire_and_forget.py#handle_request -->
    ```python
    ...that function's source, decorators included...
    ```

The path is relative to the repository's root. ``#name`` selects a top-level ``def``,
``async def`` or ``class`` of a Python file (found with :mod:`ast`). The marker must be directly
followed by the opening fence. ``tests/test_docs.py`` fails when a block differs from its source;
``scripts/sync-docs`` (``python3 -m tests.doc_includes``) rewrites every block from its source,
and ``--check`` only reports. Standard library only, so the script runs with any Python 3.11+.
"""

from __future__ import annotations

import argparse
import ast
import difflib
import re
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# The pages that may hold markers: every Markdown page of the docs and the README.
PAGE_GLOBS = ("README.md", "docs/*.md", "docs/guides/*.md")

MARKER = re.compile(r"^<!-- include: (?P<path>[^\s#]+)(?:#(?P<name>\w+))? -->$")
FENCE = re.compile(r"^(?P<fence>`{3,})(?P<info>[^`]*)$")
LANGUAGES = {".py": "python", ".ini": "ini", ".toml": "toml", ".sh": "bash", ".md": "markdown"}


class IncludeError(ValueError):
    """A marker that names nothing, or is not followed by a code block."""


@dataclass(frozen=True)
class Block:
    """One marker and the fenced block after it, as found on a page."""

    page: Path
    root: Path
    line: int  # 1-based line number of the marker
    path: str
    name: str | None
    start: int  # 0-based index of the opening fence
    end: int  # 0-based index of the closing fence
    text: str  # the block's content, each line ending in a newline

    @property
    def where(self) -> str:
        """``page:line`` of the marker, relative to the repository."""
        return f"{self.page.relative_to(self.root)}:{self.line}"

    @property
    def source(self) -> str:
        """The marker's target as written: ``path`` or ``path#name``."""
        return self.path if self.name is None else f"{self.path}#{self.name}"


def pages(root: Path = ROOT) -> list[Path]:
    """The Markdown pages that may contain markers, sorted."""
    return sorted({p for pattern in PAGE_GLOBS for p in root.glob(pattern)})


def find_blocks(page: Path, root: Path = ROOT) -> list[Block]:
    """Every marked block on ``page``.

    Raises:
        IncludeError: A marker is not directly followed by a fenced block that is closed.
    """
    lines = page.read_text().splitlines(keepends=True)
    blocks = []
    for i, line in enumerate(lines):
        marker = MARKER.match(line.rstrip("\n"))
        if marker is None:
            continue
        where = f"{page.relative_to(root)}:{i + 1}"
        opening = FENCE.match(lines[i + 1].rstrip("\n")) if i + 1 < len(lines) else None
        if opening is None:
            raise IncludeError(f"{where}: the include marker must be followed by a ``` line")
        fence = opening["fence"]
        for end in range(i + 2, len(lines)):
            if lines[end].rstrip("\n") == fence:
                break
        else:
            raise IncludeError(f"{where}: the code block after the marker is never closed")
        text = "".join(lines[i + 2 : end])
        blocks.append(Block(page, root, i + 1, marker["path"], marker["name"], i + 1, end, text))
    return blocks


def source_text(path: str, name: str | None = None, root: Path = ROOT) -> str:
    """The text a marker stands for: the whole file, or one top-level definition in it.

    Raises:
        IncludeError: The file does not exist, or has no top-level ``name``.
    """
    file = root / path
    if not file.is_file():
        raise IncludeError(f"{path}: no such file")
    text = file.read_text()
    if name is None:
        return text
    tree = ast.parse(text, filename=path)
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            if node.name == name:
                first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
                assert node.end_lineno is not None
                lines = text.splitlines(keepends=True)[first - 1 : node.end_lineno]
                return "".join(lines)
    raise IncludeError(f"{path}: no top-level def or class named {name!r}")


def expected(block: Block) -> str:
    """What ``block`` must contain: its source's text, ending in one newline."""
    text = source_text(block.path, block.name, block.root)
    return text if text.endswith("\n") else text + "\n"


def diff(block: Block) -> str:
    """A unified diff from the block's content to its source; empty when they are equal."""
    want = expected(block)
    if block.text == want:
        return ""
    return "".join(
        difflib.unified_diff(
            block.text.splitlines(keepends=True),
            want.splitlines(keepends=True),
            fromfile=f"{block.where} (the page)",
            tofile=f"{block.source} (the source)",
        )
    )


def render(block: Block) -> list[str]:
    """The fenced block, opening and closing lines included, as the source says it must be."""
    want = expected(block)
    longest = max((len(m) for m in re.findall(r"^`{3,}", want, flags=re.MULTILINE)), default=0)
    fence = "`" * max(3, longest + 1)
    language = LANGUAGES.get(Path(block.path).suffix, "text")
    return [f"{fence}{language}\n", *want.splitlines(keepends=True), f"{fence}\n"]


def sync(page: Path, root: Path = ROOT) -> bool:
    """Rewrite every marked block on ``page`` from its source. Returns whether it changed."""
    lines = page.read_text().splitlines(keepends=True)
    changed = False
    for block in reversed(find_blocks(page, root)):  # from the bottom, so earlier indices hold
        if diff(block):
            lines[block.start : block.end + 1] = render(block)
            changed = True
    if changed:
        page.write_text("".join(lines))
    return changed


def main(argv: list[str] | None = None) -> int:
    """``scripts/sync-docs [--check] [PAGE...]``: rewrite (or check) the marked blocks."""
    parser = argparse.ArgumentParser(prog="scripts/sync-docs", description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="report stale blocks, change nothing")
    parser.add_argument("pages", nargs="*", type=Path, help="pages (default: README and docs)")
    args = parser.parse_args(argv)
    targets = [p.resolve() for p in args.pages] or pages()
    stale = 0
    try:
        for page in targets:
            for block in find_blocks(page):
                if text := diff(block):
                    stale += 1
                    if args.check:
                        print(text, end="")
            if not args.check and sync(page):
                print(f"updated {page.relative_to(ROOT)}")
    except IncludeError as exc:
        print(f"sync-docs: {exc}", file=sys.stderr)
        return 2
    if args.check and stale:
        print(f"{stale} block(s) differ from their source; run scripts/sync-docs", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
