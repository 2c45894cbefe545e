"""One exception type for mistakes a user can fix, and the way front ends name the settings in it.

Every message names what is wrong and how to fix it. Front ends show the message as it is (the CLI
prints one line and exits non-zero, the studio raises gr.Error); anything else is a bug and keeps
its traceback.

Config checks name settings by their TrainConfig field (`head_epochs=2`, `batch_size`): that is the
vocabulary of the Python and HTTP APIs. A person at the command line typed `--head-epochs`, and one in
the studio moved a slider labelled "Two-stage recipe ...": `setting_names` finds the fields a message
names, so that each front end can say them in its own words instead of keeping a second copy of
every message.
"""

from __future__ import annotations

import re
from typing import Iterable, Mapping


class TunerError(Exception):
    """A problem with the user's input or environment, with the fix in the message."""


def _field_pattern(field: str) -> str:
    # A name with an underscore cannot be an English word, so it counts wherever it stands. A plain
    # word ("epochs", "scale", "out") counts only as an assignment (`epochs=5`), never in prose.
    tail = r"(?![\w])" if "_" in field else r"(?==)"
    return rf"(?<![\w.-]){re.escape(field)}{tail}"


def setting_names(message: str, fields: Iterable[str]) -> list[str]:
    """The given fields that `message` names, in order of first mention."""
    found = {}
    for field in fields:
        match = re.search(_field_pattern(field), message)
        if match:
            found[field] = match.start()
    return sorted(found, key=found.get)


def rename_settings(message: str, names: Mapping[str, str]) -> str:
    """`message` with each field it names replaced by `names[field]` (e.g. its command-line flag)."""
    if not names:
        return message
    # One pass over the longest names first, so that `head_epochs` is never read as `epochs`.
    fields = sorted(names, key=len, reverse=True)
    pattern = re.compile("|".join(f"(?P<f{i}>{_field_pattern(f)})" for i, f in enumerate(fields)))
    return pattern.sub(lambda m: names[fields[int(m.lastgroup[1:])]], message)
