"""A process-wide stop request: an application that is shutting down (Ctrl-C, SIGTERM) calls `request()`,
and the library's background workers stop taking new work, and the generators that own them stop waiting
for the work in flight (a forward pass cannot be stopped inside a kernel; its result is simply dropped).

The library never requests a stop itself, and it installs no signal handler: that is the application's call.
"""

from __future__ import annotations

import threading

_stop = threading.Event()


def request() -> None:
    """Ask every background worker to stop (safe from a signal handler: it takes no lock of ours)."""
    _stop.set()


def requested() -> bool:
    return _stop.is_set()


def reset() -> None:
    """Forget an earlier request (for an application that carries on, and for tests)."""
    _stop.clear()
