"""`tuner train`: runs the engine's training generator and prints its events; Ctrl-C stops cleanly."""

from __future__ import annotations

import argparse
import signal
import sys
import threading

from ..runtime.setup import world_from_env
from ..train import train
from .flags import config_from_args, given_fields
from .render import ConsoleRenderer


def cmd_train(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    stop = threading.Event()

    def on_sigint(signum, frame):  # first Ctrl-C: stop cleanly with a checkpoint; second: abort
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        print("\nStopping after this batch (Ctrl-C again to abort)...", file=sys.stderr, flush=True)

    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, on_sigint) if in_main_thread else None
    render = ConsoleRenderer(as_json=args.json)
    is_main = world_from_env()[0] == 0
    status = "completed"
    try:
        for event in train(config, stop=stop, resume=args.resume, overwrite=args.overwrite,
                           given=given_fields(args)):
            if is_main:
                render(event)
            status = getattr(event, "status", status)
    finally:
        render.close()  # a failed run's error line must not land on the bar's line
        if in_main_thread:  # main() may be called in-process: Ctrl-C must work as before once training ends
            signal.signal(signal.SIGINT, previous)
    return 0 if status != "stopped" else 130
