"""Ctrl-C at the command line: the first press asks the work to stop cleanly, the second aborts."""

from __future__ import annotations

import signal
import sys
import threading
from contextlib import contextmanager
from typing import Iterator


@contextmanager
def ctrl_c_stops() -> Iterator[threading.Event]:
    """A stop flag that the first Ctrl-C sets (the engine honours it between batches); a second Ctrl-C
    raises KeyboardInterrupt, which main() turns into "aborted". The previous handler is back on exit."""
    stop = threading.Event()

    def on_sigint(signum, frame):
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        print("\nStopping after this batch (Ctrl-C again to abort)...", file=sys.stderr, flush=True)

    # Only the main thread may set a handler; main() called from another thread gets the flag alone.
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, on_sigint) if in_main_thread else None
    try:
        yield stop
    finally:
        if in_main_thread:  # main() may be called in-process: Ctrl-C must work as before once the work ends
            signal.signal(signal.SIGINT, previous)
