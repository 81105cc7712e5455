"""Suite-wide fixtures."""

from __future__ import annotations

import signal
from collections.abc import Iterator

import pytest

import asyncbridge
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


@pytest.fixture(autouse=True, scope="module")
def fresh_default_bridge_per_file() -> Iterator[None]:
    """After each test file, a default bridge whose loop still runs is shut down and replaced.

    pytest-xdist gives each of its processes test files in no fixed order, so a file must find
    the default bridge as it would when run first. test_fork's case of a parent with a running
    default loop leaves it running on purpose; test_dramatiq checks that it is not.
    """
    yield
    bridge = asyncbridge.default_bridge()
    if bridge.owns_loop():
        bridge.shutdown(5, log=False)
        asyncbridge.set_default_bridge(asyncbridge.Bridge())
