"""`tuner train`: runs the engine's training generator and prints its events; Ctrl-C stops cleanly."""

from __future__ import annotations

import argparse

from ..runtime.setup import world_from_env
from ..train import train
from .flags import config_from_args, given_fields
from .render import ConsoleRenderer
from .stopping import ctrl_c_stops


def cmd_train(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    render = ConsoleRenderer(as_json=args.json)
    is_main = world_from_env()[0] == 0
    status = "completed"
    with ctrl_c_stops() as stop:  # first Ctrl-C: stop cleanly with a checkpoint; second: abort
        try:
            for event in train(config, stop=stop, resume=args.resume, overwrite=args.overwrite,
                               given=given_fields(args)):
                if is_main:
                    render(event)
                status = getattr(event, "status", status)
        finally:
            render.close()  # a failed run's error line must not land on the bar's line
    return 0 if status != "stopped" else 130
