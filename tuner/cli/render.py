"""How the command line shows training events and work in progress, on stderr (bars through tqdm)."""

from __future__ import annotations

import json
import shutil
import sys
from typing import Callable

from tqdm import tqdm

from ..events import PHASES, Event, Progress, describe
from .flags import FLAG_FOR_FIELD


def _tqdm(stream, **options) -> tqdm:
    # shutil's size, not tqdm's own measure: a terminal that reports no size (some CI and IDE
    # consoles) would get no bar at all from tqdm, and shutil falls back to COLUMNS/LINES or 80x24.
    size = shutil.get_terminal_size()
    return tqdm(file=stream, ncols=size.columns, nrows=size.lines, **options)


def progress_bar(label: str, stream=None) -> Callable[[int, int], None] | None:
    """A progress(done, total) callback that draws a bar on a terminal, left in place when done (None
    elsewhere: a log or a pipe would keep every redraw)."""
    stream = stream or sys.stderr
    if not stream.isatty():
        return None
    bar: tqdm | None = None

    def show(done: int, total: int) -> None:
        nonlocal bar
        if bar is None:
            bar = _tqdm(stream, total=total, desc=label)
        bar.update(done - bar.n)
        if done >= total:
            bar.close()
    return show


class ConsoleRenderer:
    """Prints training events: one line for each that describe() words, always; on a terminal, a bar
    for the phase under way, cleared before each line so the lines read as they would in a log."""

    def __init__(self, stream=None, as_json: bool = False):
        self.stream = stream or sys.stderr  # looked up now, not at import: callers may redirect it
        self.as_json = as_json
        self.tty = self.stream.isatty()
        self.bar: tqdm | None = None
        self.counting: tuple[int, str] | None = None  # the (epoch, phase) the bar counts steps of

    def _line(self, text: str) -> None:
        self.close()
        print(text, file=self.stream, flush=True)

    def _progress(self, event: Progress) -> None:
        note = f"loss {event.loss:.3f} acc {event.acc:.1%}" if event.loss is not None else ""
        if self.bar is None or self.counting != (event.epoch, event.phase):
            self.close()
            epoch = f"epoch {event.epoch} " if event.epoch else ""
            # A resumed epoch starts part-way: its rate counts from the first step seen here.
            self.bar = _tqdm(self.stream, total=event.steps, initial=event.step,
                             desc=epoch + PHASES.get(event.phase, event.phase), postfix=note, leave=False)
            self.counting = (event.epoch, event.phase)
        else:
            self.bar.set_postfix_str(note, refresh=False)
            self.bar.update(event.step - self.bar.n)

    def close(self) -> None:
        """Clear the bar, if one is shown (before a line, and when the run ends or fails)."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def __call__(self, event: Event) -> None:
        if self.as_json:
            if not isinstance(event, Progress):
                print(json.dumps(event.to_dict(), default=str), flush=True)
            return
        if isinstance(event, Progress):
            if self.tty:
                self._progress(event)
            return
        # The engine names settings by field; here the user typed flags.
        text = describe(event, "cli", names=FLAG_FOR_FIELD)
        if text is not None:
            self._line(text)
