"""The command line: `tuner train|inspect|evaluate|predict|export|bench` (also `python -m tuner`).

flags: the train flag table; parser: the parser and the table of sub-commands; render: events and
progress on stderr; one module per sub-command.
"""

from .parser import main

__all__ = ["main"]
