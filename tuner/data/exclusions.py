"""Exclude files: lists of images to leave out, one path inside the dataset folder per line, as
`tuner doctor --write-exclude` writes them and `--exclude FILE` reads them (`tuner train`, `tuner
doctor`). Plain text and light (no torch): the command line's flag table reads and writes them.
What the paths do to a dataset is `tuner.data.health.exclude_samples`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

from ..errors import TunerError


def read_exclusions(path: str | Path) -> list[str]:
    """An exclude file's paths: one per line, blank lines and '#' comments ignored."""
    try:
        lines = Path(path).read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise TunerError(f"Cannot read the exclude file {path}: {exc}. Give a text file with one image path "
                         "(inside the dataset folder) per line.") from None
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


def exclusion_lines(paths: Iterable[str]) -> list[str]:
    """`paths` as lines that `read_exclusions` reads back to the same images: a path that starts with
    '#' or a space gets a leading "./" (which matching drops), so it is neither a comment nor trimmed."""
    return ["./" + p if p.startswith(("#", " ", "\t")) else p for p in paths]
