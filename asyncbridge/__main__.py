"""``python -m asyncbridge status``: see :mod:`asyncbridge._status`."""

from __future__ import annotations

import sys

from ._status import main

if __name__ == "__main__":
    sys.exit(main())
