"""The command line: `tuner train|doctor|inspect|evaluate|predict|export|bench` (also `python -m tuner`).

flags: the train flag table; parser: the parser and the table of sub-commands; render: events and
progress on stderr; stopping: Ctrl-C; one module per sub-command.
"""

from .parser import main

__all__ = ["main"]
