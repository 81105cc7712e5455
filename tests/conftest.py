"""Suite-wide fixtures."""

from __future__ import annotations

import signal
from collections.abc import Iterator

import pytest

from asyncbridge._signals import EXIT_SIGNALS


@pytest.fixture(autouse=True)
def restore_signal_handlers() -> Iterator[None]:
    """Exit hooks ignore exit signals (they expect the process to end); undo that after a test.

    Dispositions are inherited by child processes, so one left at SIG_IGN would make every
    later subprocess test deaf to SIGTERM.
    """
    saved = {signum: signal.getsignal(signum) for signum in EXIT_SIGNALS}
    try:
        yield
    finally:
        for signum, handler in saved.items():
            signal.signal(signum, handler)
