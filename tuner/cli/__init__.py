"""The command line: `tuner train|inspect|evaluate|predict|export|bench` (also `python -m tuner`)."""

from .commands import main

__all__ = ["main"]
