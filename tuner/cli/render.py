"""How the command line shows training events and work in progress, on stderr."""

from __future__ import annotations

import json
import sys
from typing import Callable

from ..errors import rename_settings
from ..events import PHASES
from .flags import FLAG_FOR_FIELD


def _bar(done: int, total: int, width: int = 24) -> str:
    filled = int(width * done / max(total, 1))
    return "[" + "#" * filled + "." * (width - filled) + f"] {done}/{total}"


def progress_bar(label: str, stream=None) -> Callable[[int, int], None] | None:
    """A progress(done, total) callback that redraws one line on a terminal (None elsewhere)."""
    stream = stream or sys.stderr
    if not stream.isatty():
        return None

    def show(done: int, total: int) -> None:
        stream.write(f"\r\033[K{label} {_bar(done, total)}" + ("\n" if done >= total else ""))
        stream.flush()
    return show


class ConsoleRenderer:
    """Prints training events: a one-line progress bar on a terminal, one line per epoch always."""

    def __init__(self, stream=None, as_json: bool = False):
        self.stream = stream or sys.stderr  # looked up now, not at import: callers may redirect it
        self.as_json = as_json
        self.tty = self.stream.isatty()
        self.bar_shown = False

    def _line(self, text: str) -> None:
        if self.bar_shown:
            self.stream.write("\r\033[K")
            self.bar_shown = False
        print(text, file=self.stream, flush=True)

    def __call__(self, event) -> None:
        name = type(event).__name__
        if self.as_json:
            if name != "Progress":
                print(json.dumps(event.to_dict(), default=str), flush=True)
            return
        if name == "Progress":
            if self.tty:
                label = PHASES.get(event.phase, event.phase)
                extra = f" loss {event.loss:.3f} acc {event.acc:.1%}" if event.loss is not None else ""
                epoch = f"epoch {event.epoch} " if event.epoch else ""
                self.stream.write(f"\r\033[K{epoch}{label} {_bar(event.step, event.steps)}{extra}")
                self.stream.flush()
                self.bar_shown = True
        elif name == "RunStarted":
            where = f" (resuming at epoch {event.start_epoch + 1}, batch {event.start_batch})" if event.start_epoch or \
                event.start_batch else ""
            self._line(f"Training on {event.num_train} images ({event.num_val} for validation), "
                       f"{len(event.classes)} classes: {', '.join(event.classes)}{where}")
            weights = f"{event.weights['message']} ({event.weights_report})" if event.weights["pretrained"] else \
                "random initialisation (see the warning below)"
            self._line(f"Device: {event.device}. Weights: {weights}.")
        elif name == "Message":  # the engine names settings by field; here the user typed flags
            self._line(("warning: " if event.level == "warning" else "") + rename_settings(event.text, FLAG_FOR_FIELD))
        elif name == "StageStarted":
            self._line(f"Epoch {event.epoch}: training {event.trainable_params:,} of {event.total_params:,} parameters "
                       + rename_settings(f"(trainable={event.trainable}); {event.fast_path}.", FLAG_FOR_FIELD))
        elif name == "EpochEnd":
            self._line(f"epoch {event.epoch}/{event.epochs}  train loss {event.train_loss:.4f} acc {event.train_acc:.1%}"
                       f"  val loss {event.val_loss:.4f} acc {event.val_acc:.1%}  lr {event.lr:.3g}  "
                       f"{event.seconds:.1f}s{'  *best' if event.improved else ''}")
        elif name == "Finished":
            epochs = f"{event.epochs_done} epoch{'' if event.epochs_done == 1 else 's'}"
            best = (f"best val accuracy {event.best_val_acc:.1%} (epoch {event.best_epoch})" if event.best_epoch
                    else "no epoch validated yet")
            self._line(f"{event.status.replace('_', ' ').capitalize()} after {epochs}; {best}. "
                       f"Checkpoint: {event.checkpoint}")
