"""How the command line shows training events and work in progress, on stderr."""

from __future__ import annotations

import json
import sys
from typing import Callable

from ..events import PHASES, Event, Progress, describe
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

    def __call__(self, event: Event) -> None:
        if self.as_json:
            if not isinstance(event, Progress):
                print(json.dumps(event.to_dict(), default=str), flush=True)
            return
        if isinstance(event, Progress):
            if self.tty:
                label = PHASES.get(event.phase, event.phase)
                extra = f" loss {event.loss:.3f} acc {event.acc:.1%}" if event.loss is not None else ""
                epoch = f"epoch {event.epoch} " if event.epoch else ""
                self.stream.write(f"\r\033[K{epoch}{label} {_bar(event.step, event.steps)}{extra}")
                self.stream.flush()
                self.bar_shown = True
            return
        # The engine names settings by field; here the user typed flags.
        text = describe(event, "cli", names=FLAG_FOR_FIELD)
        if text is not None:
            self._line(text)
