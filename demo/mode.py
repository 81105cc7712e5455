"""How the app pushes a hit, shared by every gunicorn worker through one small file.

``asyncbridge``: the view hands the push to ``asyncbridge.run_soon`` and answers at once.
``inline``: the view sends the push itself with a blocking HTTP client and answers after the hub
has; each request then costs the push's round trip. The hub writes the file when the dashboard's
switch is flipped (``POST /api/mode``), and each request reads it, so that every worker follows
the switch from its next request on.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

__all__ = ["DEFAULT", "MODES", "ModeFile"]

MODES = ("asyncbridge", "inline")
DEFAULT = "asyncbridge"


class ModeFile:
    """The current mode, in a file; or a fixed mode when there is no file.

    Args:
        path: The file; ``None`` for a fixed mode.
        default: The mode while the file is missing or unreadable, and the fixed mode.
    """

    def __init__(self, path: str | os.PathLike[str] | None, default: str = DEFAULT) -> None:
        if default not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {default!r}")
        self.path = Path(path) if path else None
        self.default = default
        self._seen: tuple[int, int] | None = None
        self._mode = default

    def read(self) -> str:
        """The current mode: one ``stat`` per call, a read only when the file changed."""
        if self.path is None:
            return self.default
        try:
            st = os.stat(self.path)
            key = (st.st_ino, st.st_mtime_ns)
            if key != self._seen:
                text = self.path.read_text().strip()
                self._mode = text if text in MODES else self.default
                self._seen = key
        except OSError:
            return self.default
        return self._mode

    def write(self, mode: str) -> None:
        """Set the mode for every reader, atomically (a new file renamed over the old one).

        Raises:
            ValueError: ``mode`` is not one of :data:`MODES`.
            RuntimeError: This is a fixed mode, with no file.
        """
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        if self.path is None:
            raise RuntimeError("no mode file: the mode is fixed")
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".mode-")
        try:
            with os.fdopen(fd, "w") as f:
                f.write(mode + "\n")
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
